"""check_registry_deep: prove a container registry still serves its images byte for byte."""

__version__ = "0.1.0"
