package org.mobilereid.core

/**
 * A model that turns a prepared input into an embedding. Implemented in `:app` by the LiteRT interpreter
 * (`.tflite`) and the ExecuTorch module (`.pte`); declared here so the evaluation loop and the gallery logic stay
 * testable without Android.
 */
interface Embedder : AutoCloseable {
    val metadata: ArtifactMetadata

    /** One inference; returns the float embedding (quantized outputs already dequantized). */
    fun embed(input: PreparedInput): FloatArray
}

/** Decoded pixels: ARGB_8888 values row by row, as `Bitmap.getPixels` returns them. */
class ArgbImage(val width: Int, val height: Int, val pixels: IntArray) {
    init {
        require(pixels.size == width * height) { "pixel array holds ${pixels.size} values, expected ${width}x$height" }
    }
}

/** Turns raw output values into the float embedding the sidecar promises. */
object OutputDecoder {
    fun decode(spec: TensorSpec, floats: FloatArray?, ints: IntArray?): FloatArray = when (spec.dtype) {
        "float32" -> floats ?: error("float32 output without float values")
        "int8", "uint8" -> Preprocessor.dequantize(ints ?: error("quantized output without integer values"),
            spec.quantization ?: error("quantized output without quantization parameters"))
        else -> throw IllegalArgumentException("output dtype '${spec.dtype}' is not supported")
    }
}
