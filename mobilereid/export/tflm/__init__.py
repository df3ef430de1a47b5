"""TFLite Micro export: the target, least-peak operator order and arena analysis, the slimmed flatbuffer and the
memory plot."""
