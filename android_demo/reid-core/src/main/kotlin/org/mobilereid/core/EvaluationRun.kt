package org.mobilereid.core

import java.io.File

/**
 * The evaluation mode's loop, the same protocol as `mobilereid/device/evaluator.py`: every manifest image is decoded,
 * preprocessed and embedded once; `warmup` untimed inferences run on the first query image; the latency of each
 * image is the inference alone (preprocessing and decoding excluded), measured with a monotonic clock.
 */
class EvaluationRun(
    private val embedder: Embedder,
    private val decode: (File) -> ArgbImage,
    private val clockNanos: () -> Long = System::nanoTime,
) {
    class Output(val query: List<FloatArray>, val gallery: List<FloatArray>, val latencyMs: DoubleArray)

    fun run(manifest: EvaluationManifest, warmup: Int, progress: (done: Int, total: Int) -> Unit = { _, _ -> }): Output {
        val pre = Preprocessor(embedder.metadata)
        val total = manifest.query.size + manifest.gallery.size
        val times = ArrayList<Double>(total)
        var done = 0
        fun embedAll(images: List<EvalImage>, warm: Int): List<FloatArray> = images.mapIndexed { i, img ->
            val file = File(manifest.root, img.file)
            val pixels = try {
                decode(file)
            } catch (e: Exception) {
                throw IllegalArgumentException("$file: cannot decode image (${e.message})")
            }
            val x = pre.prepare(pixels.pixels, pixels.width, pixels.height)
            if (i == 0) repeat(warm) { embedder.embed(x) }
            val t0 = clockNanos()
            val y = embedder.embed(x)
            times.add((clockNanos() - t0) / 1e6)
            require(y.size == embedder.metadata.embeddingDim) { "$file: model returned ${y.size} values, sidecar says ${embedder.metadata.embeddingDim}" }
            progress(++done, total)
            y
        }
        val q = embedAll(manifest.query, warmup)
        val g = embedAll(manifest.gallery, 0)
        return Output(q, g, times.toDoubleArray())
    }
}
