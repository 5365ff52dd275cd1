"""Networks: the model registry and modules, and the layers they are built from.

`models` (the study's two CNNs and the registry `config.model.name` is looked up in),
`resnet` (the residual network of the recipe beyond the study),
`conv` (the convolution with its implementations: XLA, patches, charjax's native CPU
kernels in `native_conv` and `native/conv.cc`), `pooling`, `dropout`.
"""
