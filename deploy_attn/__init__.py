"""deploy-attn: CNN attention modules and their backbones, carried to deployment."""
from .models import create_model
from .registry import get_spec, list_models
from .rewrite import patch_for_deploy

__version__ = "0.1.0"
__all__ = ["create_model", "get_spec", "list_models", "patch_for_deploy", "__version__"]
