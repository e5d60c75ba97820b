"""UniEmoX models: the MAE ViT (registry + factory), fusions, the two-stream student and the CLIP teacher."""

from uniemox.models.fusion import FUSIONS, Fusion, create_fusion, register_fusion
from uniemox.models.mae import MAE_CONFIGS, MAEConfig, MaskedAutoencoderViT, create_mae, mae_config
from uniemox.models.masking import num_visible, random_masking
from uniemox.models.teacher import ClipTeacher, TeacherLoadError, load_open_clip, prompt_embeddings
from uniemox.models.uniemox import StudentOutput, UniEmoX

__all__ = [
    "FUSIONS", "MAE_CONFIGS", "ClipTeacher", "Fusion", "MAEConfig", "MaskedAutoencoderViT",
    "StudentOutput", "TeacherLoadError", "UniEmoX", "create_fusion", "create_mae", "load_open_clip",
    "mae_config", "num_visible", "prompt_embeddings", "random_masking", "register_fusion",
]  # fmt: skip
