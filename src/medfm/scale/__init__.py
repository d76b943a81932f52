"""BioVFM-style scaling studies: pretraining x evaluation grids, power-law fits and their report."""
