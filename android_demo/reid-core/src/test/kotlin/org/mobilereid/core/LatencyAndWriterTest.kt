package org.mobilereid.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File

class LatencyAndWriterTest {
    @Test
    fun `percentiles equal numpy's`() {
        for (c in Golden.objects(Golden.json("latency.json")["cases"])) {
            val s = LatencyStats()
            Golden.doubles(c["samples"]).forEach { s.add(it) }
            for (p in listOf(50, 90, 99)) assertEquals((c["p$p"] as Number).toDouble(), s.percentile(p.toDouble()), 1e-12, "p$p of ${s.count}")
            assertEquals((c["mean"] as Number).toDouble(), s.mean(), 1e-9)
        }
        val window = LatencyStats(window = 3)
        listOf(100.0, 1.0, 2.0, 3.0).forEach { window.add(it) }
        assertEquals(3, window.count)
        assertEquals(2.0, window.percentile(50.0))
    }

    /** Writes the golden embeddings with the evaluation writer; the Python test reads the .npz back with numpy. */
    @Test
    fun `evaluation writer output is what the host reads`() {
        val out = File(System.getProperty("mobilereid.kotlin_out") ?: error("mobilereid.kotlin_out is not set"))
        val n = Golden.json("npz.json")
        val data = File(out, "data").apply { mkdirs() }
        fun entries(split: String, pids: IntArray, cams: IntArray) = pids.indices.joinToString(",") { i ->
            File(data, "$split/$i.jpg").apply { parentFile.mkdirs(); writeBytes(byteArrayOf(1)) }
            """{"file": "$split/$i.jpg", "pid": ${pids[i]}, "camid": ${cams[i]}}"""
        }
        File(data, "manifest.json").writeText("""{"format": "mobilereid-eval-manifest", "format_version": 1,
            "query": [${entries("query", Golden.ints(n["q_pids"]), Golden.ints(n["q_camids"]))}],
            "gallery": [${entries("bounding_box_test", Golden.ints(n["g_pids"]), Golden.ints(n["g_camids"]))}]}""")
        val manifest = EvaluationManifest.read(data)
        val meta = Golden.dir.listFiles()!!.filter { it.name.endsWith(".tflite.json") }.map { ArtifactMetadata.read(it) }
            .first { it.runtime == "litert" && it.input.dtype == "int8" }
        val artifact = File(out, "model.tflite").apply { writeBytes(ByteArray(10)) }
        val rows = { k: String -> (n[k] as List<*>).map { Golden.floats(it) } }
        val summary = EvaluationWriter(File(out, "results")).write(
            artifact, meta, manifest, rows("query"), rows("gallery"), Golden.doubles(n["latency_ms"]),
            threads = 4, warmup = 3, host = mapOf("device" to "jvm-test"), sha256 = sha256Hex(artifact),
        )
        @Suppress("UNCHECKED_CAST")
        val s = Json.parse(summary.readText()) as Map<String, Any?>
        assertEquals("model.tflite", s["artifact"])
        assertEquals(10L, s["size_bytes"])
        assertTrue(File(out, "results/model.tflite.npz").isFile)
        assertTrue(File(out, "results").listFiles()!!.none { it.name.endsWith(".tmp") })
    }

    @Test
    fun `manifest errors name the file and the problem`(@TempDir tmp: java.nio.file.Path) {
        val dir = tmp.toFile()
        var e = assertThrows(IllegalArgumentException::class.java) { EvaluationManifest.read(dir) }
        assertTrue(e.message!!.contains("manifest.json") && e.message!!.contains("not found"), e.message)
        File(dir, "manifest.json").writeText("""{"format": "mobilereid-eval-manifest", "query": [{"file": "../x.jpg", "pid": 1, "camid": 0}], "gallery": []}""")
        e = assertThrows(IllegalArgumentException::class.java) { EvaluationManifest.read(dir) }
        assertTrue(e.message!!.contains("leaves the data folder"), e.message)
        File(dir, "manifest.json").writeText("{\"format\": ")
        e = assertThrows(IllegalArgumentException::class.java) { EvaluationManifest.read(dir) }
        assertTrue(e.message!!.contains("manifest.json"), e.message)
    }
}
