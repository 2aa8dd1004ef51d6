"""DRhard: STAR and ADORE dense retrieval training (Zhan et al., SIGIR 2021)."""

__version__ = "0.1.0"
