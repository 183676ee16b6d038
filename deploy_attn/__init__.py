"""deploy-attn: CNN attention modules and their backbones, carried to deployment."""
from .api import export
from .core import __version__
from .exportdir.reader import open_export
from .models import create_model
from .registry import get_spec, list_models
from .sources import load_source
from .swaps import patch_for_deploy

__all__ = ["create_model", "export", "get_spec", "list_models", "load_source", "open_export",
           "patch_for_deploy", "__version__"]
