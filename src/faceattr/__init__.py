"""faceattr: gender, ethnicity and age from face images, with honest evaluation."""

__version__ = "0.1.0"
