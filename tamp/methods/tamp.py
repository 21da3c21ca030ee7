"""TAMP = DAS's diversity-aware allocation + AMIA's token selection + Wanda's scoring (the paper's method)."""

from tamp.methods.base import WeightMethod

METHOD = WeightMethod(
    name="tamp", label="TAMP", order=8, summary="DAS allocation + AMIA token selection + Wanda scoring",
    allocation="das", token_selection="amia", scoring="wanda",
)
