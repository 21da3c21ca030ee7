"""Dense: the unpruned model, the first row of every table (it keeps every weight, so it takes sparsity 0)."""

from tamp.methods.base import WeightMethod

METHOD = WeightMethod(
    name="dense", label="Dense", order=0, summary="the unpruned model (sparsity 0), every table's reference row",
    scoring="magnitude", keeps_every_weight=True,
)
