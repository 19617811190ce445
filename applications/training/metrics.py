"""The accuracy metrics of training, safe under mixed precision."""

import keras


@keras.saving.register_keras_serializable(package="keras_irevnet_train")
class TopKAccuracy(keras.metrics.SparseTopKCategoricalAccuracy):
    """`SparseTopKCategoricalAccuracy` that first casts the scores to float32.

    Under a mixed policy the model's softmax output is float16 / bfloat16, which TensorFlow's
    in_top_k kernel refuses.
    """

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, keras.ops.cast(y_pred, "float32"), sample_weight)


def accuracy_metrics(classes):
    """top1 always; top5 when there are at least 5 classes (named as in metrics.json)."""
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="top1")]
    if classes >= 5:
        metrics.append(TopKAccuracy(k=5, name="top5"))
    return metrics
