package org.mobilereid.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File

class EvaluationRunTest {
    /** An embedder whose output is the mean of each input channel: deterministic, and it sees the real tensor. */
    private class ChannelMeans(override val metadata: ArtifactMetadata) : Embedder {
        var calls = 0
        override fun embed(input: PreparedInput): FloatArray {
            calls++
            val n = input.floats.size / 3
            return FloatArray(metadata.embeddingDim) { d -> (0 until n).map { input.floats[(d % 3) * n + it] }.average().toFloat() }
        }
        override fun close() {}
    }

    private fun meta(): ArtifactMetadata =
        ArtifactMetadata.read(Golden.dir.listFiles()!!.first { it.name.endsWith(".onnx.json") })

    @Test
    fun `loop embeds every image once, warms up, and times only inference`(@TempDir tmp: java.nio.file.Path) {
        val dir = tmp.toFile()
        val images = listOf("query/a.png", "query/b.png", "bounding_box_test/c.png")
        images.forEach { File(dir, it).apply { parentFile.mkdirs(); writeText("x") } }
        val manifest = EvaluationManifest(dir, images.take(2).map { EvalImage(it, 1, 0) }, listOf(EvalImage(images[2], 1, 1)))
        val embedder = ChannelMeans(meta())
        var t = 0L
        val progress = mutableListOf<Int>()
        val out = EvaluationRun(embedder, { f -> ArgbImage(4, 8, IntArray(32) { f.name[0].code * 1000 + it }) }, { t += 2_000_000; t })
            .run(manifest, warmup = 3) { done, _ -> progress.add(done) }
        assertEquals(3 + 3, embedder.calls)
        assertEquals(2, out.query.size)
        assertEquals(1, out.gallery.size)
        assertTrue(out.latencyMs.all { it == 2.0 })
        assertEquals(listOf(1, 2, 3), progress)
        assertEquals(embedder.metadata.embeddingDim, out.query[0].size)
    }

    @Test
    fun `an undecodable image is named`(@TempDir tmp: java.nio.file.Path) {
        val dir = tmp.toFile()
        val manifest = EvaluationManifest(dir, listOf(EvalImage("query/bad.jpg", 1, 0)), listOf(EvalImage("query/bad.jpg", 1, 1)))
        val e = assertThrows(IllegalArgumentException::class.java) {
            EvaluationRun(ChannelMeans(meta()), { throw java.io.IOException("truncated") }).run(manifest, 0)
        }
        assertTrue(e.message!!.contains("bad.jpg") && e.message!!.contains("truncated"), e.message)
    }
}
