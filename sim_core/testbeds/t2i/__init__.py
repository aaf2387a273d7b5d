"""Text-to-image (Table 3): PixArt-alpha in SIM's EDM form, text conditioning, prompt sources and the scorers."""
