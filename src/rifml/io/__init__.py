"""The file edge of rifml: reading panel files (formats, dialects, layouts) and writing outputs.

Nothing in the core (validate, features, subtypes, model, explain) imports from here.
"""
