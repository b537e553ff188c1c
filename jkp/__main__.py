"""``python -m jkp`` runs jkpmanager."""

from jkp.app import main

main()
