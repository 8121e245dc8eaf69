"""Our own zoo of classic CNNs (importable as ``surgeon_models``)."""
