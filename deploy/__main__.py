"""Entry point of the packaged app (a MONAI Application Package runs ``python3 <app folder>``)."""

from app import main

main()
