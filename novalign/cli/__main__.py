"""`python -m novalign.cli`: the `novalign` command."""

from novalign.cli import main

main()
