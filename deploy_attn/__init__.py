"""deploy-attn: CNN attention modules and their backbones, carried to deployment."""
from .models import create_model
from .pipeline.job import export, open_export
from .registry import get_spec, list_models
from .rewrite import patch_for_deploy
from .sources import load_source

__version__ = "0.1.0"
__all__ = ["create_model", "export", "get_spec", "list_models", "load_source", "open_export",
           "patch_for_deploy", "__version__"]
