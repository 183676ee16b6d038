"""The commands beside export: bench, accuracy, maps, report."""


