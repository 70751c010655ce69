"""The DEQ-Flow network: encoders, correlation pyramid, update block, convex upsampling."""
