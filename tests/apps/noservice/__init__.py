"""A package without `service.py`: `farine start noservice` names what is missing."""
