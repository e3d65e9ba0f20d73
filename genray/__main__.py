"""`python -m genray VERB ...`: the `genray` command without the installed script.

    python -m genray train vae/vae_digits --workers 2
    python -m genray eval models:/vae-digits@champion

The one module that imports genray.pipelines.cli: nothing imports this one.
"""
import sys

from genray.pipelines.cli import main

sys.exit(main())
