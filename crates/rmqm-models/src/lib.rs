//! Encoders (LeNet-5, ResNet-18) on candle, with fast CPU kernels and safetensors save/load.
