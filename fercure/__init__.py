"""fercure: curate facial-expression datasets and clean their noisy labels."""

__version__ = "0.5.1"
