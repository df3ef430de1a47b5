package org.mobilereid.demo

import org.mobilereid.core.ArtifactMetadata
import org.mobilereid.core.Embedder
import org.mobilereid.core.OutputDecoder
import org.mobilereid.core.PreparedInput
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** Opens the runtime the sidecar names; refuses artifacts that are not meant for a phone with a clear message. */
fun openEmbedder(model: File, meta: ArtifactMetadata, threads: Int): Embedder = when (meta.runtime) {
    "litert" -> LiteRtEmbedder(model, meta, threads)
    "executorch" -> ExecuTorchEmbedder(model, meta, threads)
    else -> throw IllegalArgumentException("${model.name}: runtime '${meta.runtime}' does not run in the app (use a .tflite or .pte export)")
}

/**
 * LiteRT (`org.tensorflow.lite.Interpreter`, from `com.google.ai.edge.litert:litert`): XNNPACK is the default CPU
 * delegate. Float inputs are written as native-order floats; int8/uint8 inputs as the bytes the core quantized
 * with the sidecar's scale and zero point. The interpreter's own tensor types and shapes are checked against the
 * sidecar at load time, so a mismatched pair fails before the first frame.
 */
class LiteRtEmbedder(model: File, override val metadata: ArtifactMetadata, threads: Int) : Embedder {
    private val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads))
    private val input: ByteBuffer
    private val output: ByteBuffer

    init {
        val inT = interpreter.getInputTensor(0)
        val outT = interpreter.getOutputTensor(0)
        require(inT.shape().toList() == metadata.input.shape) {
            "${model.name}: interpreter input shape ${inT.shape().toList()} differs from the sidecar's ${metadata.input.shape}"
        }
        require(inT.dataType() == dataType(metadata.input.dtype)) { "${model.name}: input type ${inT.dataType()} differs from the sidecar's ${metadata.input.dtype}" }
        require(outT.dataType() == dataType(metadata.output.dtype)) { "${model.name}: output type ${outT.dataType()} differs from the sidecar's ${metadata.output.dtype}" }
        input = ByteBuffer.allocateDirect(inT.numBytes()).order(ByteOrder.nativeOrder())
        output = ByteBuffer.allocateDirect(outT.numBytes()).order(ByteOrder.nativeOrder())
    }

    override fun embed(input: PreparedInput): FloatArray {
        this.input.rewind()
        if (metadata.input.dtype == "float32") this.input.asFloatBuffer().put(input.floats) else this.input.put(input.quantizedBytes())
        this.input.rewind()
        output.rewind()
        interpreter.run(this.input, output)
        output.rewind()
        val n = metadata.output.elementCount
        return when (metadata.output.dtype) {
            "float32" -> FloatArray(n).also { output.asFloatBuffer().get(it) }.let { OutputDecoder.decode(metadata.output, it, null) }
            "int8" -> OutputDecoder.decode(metadata.output, null, IntArray(n) { output.get(it).toInt() })
            else -> OutputDecoder.decode(metadata.output, null, IntArray(n) { output.get(it).toInt() and 0xFF })
        }
    }

    override fun close() = interpreter.close()

    private fun dataType(dtype: String): DataType = when (dtype) {
        "float32" -> DataType.FLOAT32
        "int8" -> DataType.INT8
        "uint8" -> DataType.UINT8
        else -> throw IllegalArgumentException("dtype '$dtype' is not supported")
    }
}

/**
 * ExecuTorch (`org.pytorch.executorch.Module`, from `org.pytorch:executorch-android`): the .pte is memory-mapped,
 * XNNPACK-delegated partitions run on the given number of threads (0 = the runtime's default). The project's .pte
 * exports take a float NCHW tensor (quantization happens inside the graph), so the input is `Tensor.fromBlob` of
 * the core's float tensor with the sidecar's shape.
 */
class ExecuTorchEmbedder(model: File, override val metadata: ArtifactMetadata, threads: Int) : Embedder {
    private val module = Module.load(model.absolutePath, Module.LOAD_MODE_MMAP, threads)
    private val shape = metadata.input.shape.map { it.toLong() }.toLongArray()

    init {
        require(metadata.input.dtype == "float32") { "${model.name}: ExecuTorch exports take float input, the sidecar says ${metadata.input.dtype}" }
        module.loadMethod("forward")
    }

    override fun embed(input: PreparedInput): FloatArray {
        val out = module.forward(EValue.from(Tensor.fromBlob(input.floats, shape)))
        return OutputDecoder.decode(metadata.output, out[0].toTensor().dataAsFloatArray, null)
    }

    override fun close() = module.destroy()
}
