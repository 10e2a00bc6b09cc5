"""MLflow "model from code" entry: logged with the model, it names the pyfunc class to load."""

import mlflow

from rifml.serving import RifmlModel

mlflow.models.set_model(RifmlModel())
