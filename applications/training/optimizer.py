"""SGD with PyTorch's weight decay: an L2 term added to the gradient before momentum."""

import keras


@keras.saving.register_keras_serializable(package="keras_irevnet_train")
class CoupledWeightDecaySGD(keras.optimizers.SGD):
    """`torch.optim.SGD(momentum=m, weight_decay=wd)`, as the reference trains.

    Every trainable variable (kernels, biases, BatchNorm scales and offsets alike, as in the
    reference) gets `gradient + wd * variable` before the momentum update. This differs from
    Keras's own `weight_decay`, which is decoupled (it shrinks the variable by `lr * wd`
    outside the momentum). The term is added in `update_step`, which runs after gradients are
    summed over replicas, so it is counted once whatever the number of replicas.

    Args:
        learning_rate: a float or a `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: the momentum (0.9 in the paper).
        l2: the weight decay factor `wd`.
        **kwargs: other `keras.optimizers.SGD` arguments (not `weight_decay`).
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, l2=0.0, name="sgd_l2", **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError(
                "CoupledWeightDecaySGD applies the coupled `l2` decay; do not also pass "
                "Keras's decoupled `weight_decay`."
            )
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = gradient + keras.ops.cast(self.l2, gradient.dtype) * keras.ops.cast(
                variable, gradient.dtype
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["l2"] = self.l2
        return config
