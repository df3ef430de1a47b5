"""TFLite-family export: the onnx2tf and litert-torch routes, the model's embedded description, its op list, size
breakdown and XNNPACK delegation report; shared by the tflite, edgetpu and tflm targets."""
