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
        if self.momentum and _tensorflow_resource(variable, gradient):
            self._tensorflow_momentum_step(gradient, variable, learning_rate)
        else:
            super().update_step(gradient, variable, learning_rate)

    def _tensorflow_momentum_step(self, gradient, variable, learning_rate):
        # Keras' SGD computes the same update (m = momentum * m - lr * g; the variable plus m,
        # or plus momentum * m - lr * g with Nesterov's) as five ops per variable, each a
        # pass over its weights; TensorFlow's fused kernel makes one pass. On the ImageNet
        # model's 125 million weights (CPU, 2 cores): 0.202 s a step against 0.092 s.
        import tensorflow as tf

        momentum = self.momentums[self._get_variable_index(variable)]
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=momentum.value.handle,
            lr=tf.cast(learning_rate, variable.dtype),
            grad=tf.cast(gradient, variable.dtype),
            momentum=tf.cast(self.momentum, variable.dtype),
            use_locking=False,
            use_nesterov=self.nesterov,
        )

    def get_config(self):
        config = super().get_config()
        config["l2"] = self.l2
        return config


def _tensorflow_resource(variable, gradient):
    """Whether the update is TensorFlow's, of a resource variable (as Keras' TensorFlow
    optimizers hand to `update_step`: the Keras variable's `value`, or a replica's
    component under a distribution strategy) by a dense gradient."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return hasattr(variable, "handle") and not isinstance(gradient, tf.IndexedSlices)
