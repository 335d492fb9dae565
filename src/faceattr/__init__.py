"""faceattr: gender, ethnicity and age from face images, with honest evaluation.

``from faceattr import Predictor`` gives the photo predictor; it is imported on first use, so
``import faceattr`` (and ``faceattr --help``) stays instant."""

__version__ = "0.1.0"
__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    if name == "Predictor":
        from faceattr.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'faceattr' has no attribute {name!r}")
