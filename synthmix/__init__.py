"""synthmix: does adding GAN-generated image+label pairs to the training data help segmentation?"""

__version__ = "0.1.0"
