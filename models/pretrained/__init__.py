"""Pretrained networks the training losses need (VGG19 features, FaceNet identity), converted
once from weights that ship inside registry packages and cached as safetensors."""

from __future__ import annotations

from models.pretrained.cache import AssetMissing
from models.pretrained.facenet import FaceNet, load_facenet
from models.pretrained.vgg19 import VGG19Features, load_vgg19

__all__ = ["AssetMissing", "FaceNet", "VGG19Features", "load_facenet", "load_vgg19"]
