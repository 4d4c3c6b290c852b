"""The image catalog: one list of images that notebooks and jobs may use."""
