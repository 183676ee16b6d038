"""python -m deploy_attn.cli: the same as the deploy-attn command."""
from . import main

raise SystemExit(main())
