"""The networks: SelfieAvatar's generator and discriminator, their layers, the CPU
student, the presets and the losses."""
