"""`python -m pipelines VERB ...`: the `genray` command without the installed script.

    python -m pipelines train pipelines/configs/vae/vae_digits.yaml --workers 2
    python -m pipelines eval models:/vae-digits@champion

The one module that imports pipelines.cli: nothing imports this one.
"""
import sys

from pipelines.cli import main

sys.exit(main())
