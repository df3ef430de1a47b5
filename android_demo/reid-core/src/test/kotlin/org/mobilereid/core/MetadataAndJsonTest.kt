package org.mobilereid.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File

class MetadataAndJsonTest {
    @Test
    fun `real sidecars parse with their tensors and preprocessing`() {
        val sidecars = Golden.dir.listFiles()!!.filter { it.name.matches(Regex(".*\\.(tflite|onnx|pte)\\.json")) }
        assertTrue(sidecars.size >= 2)
        for (f in sidecars) {
            val m = ArtifactMetadata.read(f)
            assertEquals(f.name, m.artifact + ".json")
            assertEquals(m.preprocess.height, if (m.layout == "NCHW") m.input.shape[2] else m.input.shape[1])
            assertEquals(m.embeddingDim, m.output.shape.last())
            if (m.input.dtype != "float32") assertTrue(m.input.quantization!!.scale > 0f)
        }
    }

    @Test
    fun `camera block of an SIE model is read and checked`() {
        fun sidecar(camera: String) = """{"format": "mobilereid-artifact", "artifact": "m.tflite", "target": "tflite",
            "runtime": "litert", "precision": "fp32", "model": {"embedding_dim": 4},
            "preprocess": {"height": 8, "width": 4, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": 0.00392156862745098},
            "input": {"shape": [1, 8, 4, 3], "dtype": "float32", "layout": "NHWC"}, "output": {"shape": [1, 4], "dtype": "float32"}$camera}"""
        assertEquals(CameraSpec(6, 2), ArtifactMetadata.parse(sidecar(""", "camera": {"embedding": "sie", "cameras": 6, "baked_camera": 2}""")).camera)
        assertEquals(null, ArtifactMetadata.parse(sidecar("")).camera)
        val e = assertThrows(IllegalArgumentException::class.java) {
            ArtifactMetadata.parse(sidecar(""", "camera": {"cameras": 6, "baked_camera": 9}"""), "m.json")
        }
        assertTrue(e.message!!.startsWith("m.json:") && "baked_camera 9" in e.message!!, e.message)
    }

    @Test
    fun `the calibrated threshold of a sidecar is the matcher's default, and only for its own artifact`() {
        fun sidecar(match: String) = """{"format": "mobilereid-artifact", "artifact": "m.tflite", "sha256": "abc123",
            "target": "tflite", "runtime": "litert", "precision": "int8", "model": {"embedding_dim": 4},
            "preprocess": {"height": 8, "width": 4, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": 0.00392156862745098},
            "input": {"shape": [1, 8, 4, 3], "dtype": "float32", "layout": "NHWC"}, "output": {"shape": [1, 4], "dtype": "float32"}$match}"""
        // what `evaluate --write-threshold` writes besides (held-out rates, the spread, the data): read past, not needed
        val calibrated = ArtifactMetadata.parse(
            sidecar(
                """, "match": {"threshold": 0.8125, "far": 0.001, "held_out_far": 0.0013, "tail_identity_pairs": 56.4, """ +
                    """"far_spread": [0.0055, 0.0166], "artifact_sha256": "abc123"}""",
            ),
        )
        assertEquals(MatchSpec(0.8125, 0.001, "abc123"), calibrated.match)
        assertEquals(0.8125, calibrated.defaultThreshold())
        assertEquals(0.6, ArtifactMetadata.parse(sidecar("")).defaultThreshold())  // no calibration: the hand-set value
        val other = assertThrows(IllegalArgumentException::class.java) {
            ArtifactMetadata.parse(sidecar(""", "match": {"threshold": 0.5, "far": 0.001, "artifact_sha256": "fff"}"""), "m.json")
        }
        assertTrue(other.message!!.startsWith("m.json:") && "another artifact" in other.message!!, other.message)
        assertThrows(IllegalArgumentException::class.java) {
            ArtifactMetadata.parse(sidecar(""", "match": {"threshold": 0.5, "far": 1.5, "artifact_sha256": "abc123"}"""))
        }
        assertEquals(GalleryFormat.Float32, calibrated.galleryFormat())
        val int8 = ArtifactMetadata.parse(
            sidecar(""", "match": {"threshold": 0.5, "far": 0.001, "artifact_sha256": "abc123", "gallery": {"format": "int8", "scale": 0.0025}}""")
        )
        assertEquals(GalleryFormat.Int8(0.0025f), int8.galleryFormat())
        val binary = ArtifactMetadata.parse(
            sidecar(""", "match": {"threshold": 0.5, "far": 0.001, "artifact_sha256": "abc123", "gallery": {"format": "binary", "threshold": 0.25}}""")
        )
        assertEquals(GalleryFormat.Binary(0.25), binary.galleryFormat())
        assertEquals(0.25, binary.defaultThreshold())  // (D - 2 x Hamming) / D has its own threshold
        val half = ArtifactMetadata.parse(
            sidecar(""", "match": {"threshold": 0.5, "far": 0.001, "artifact_sha256": "abc123", "gallery": {"format": "float16"}}""")
        )
        assertEquals(GalleryFormat.Float16, half.galleryFormat())
        assertEquals(0.5, half.defaultThreshold())  // halves score the cosine: the artifact's threshold
        for (bad in listOf("""{"format": "binary"}""", """{"format": "bfloat16"}""")) {
            val e = assertThrows(IllegalArgumentException::class.java) {
                ArtifactMetadata.parse(sidecar(""", "match": {"threshold": 0.5, "far": 0.001, "artifact_sha256": "abc123", "gallery": $bad}"""), "m.json")
            }
            assertTrue(e.message!!.startsWith("m.json:") && ("threshold" in e.message!! || "bfloat16" in e.message!!), e.message)
        }
        fun pca(name: String, mean: String) = sidecar(
            """, "match": {"threshold": 0.5, "far": 0.001, "artifact_sha256": "abc123", "gallery": {"format": "$name",
            "threshold": 0.375, "mean": $mean, "components": [[1, 0, 0, 0], [0, 0.5, 0.5, 0]]}}"""
        )
        val projected = ArtifactMetadata.parse(pca("pca2", "[0, 0, 0, 0.25]"))
        val format = projected.galleryFormat() as GalleryFormat.Pca
        assertEquals("pca2", format.name)
        assertEquals(0.375, projected.defaultThreshold())  // the projected cosine's own threshold, not match.threshold
        for ((name, mean, what) in listOf(Triple("pca3", "[0, 0, 0, 0]", "components"), Triple("pca2", "[0, 0, 0]", "different sizes"))) {
            val e = assertThrows(IllegalArgumentException::class.java) { ArtifactMetadata.parse(pca(name, mean), "m.json") }
            assertTrue(e.message!!.startsWith("m.json:") && what in e.message!!, e.message)
        }
    }

    @Test
    fun `json round trip and errors`() {
        val text = """{"a": [1, 2.5, -3e2, true, null, "x\"\u00e9\n"], "b": {}}"""
        val v = Json.parse(text)
        assertEquals(v, Json.parse(Json.write(v)))
        assertEquals(-300.0, ((v as Map<*, *>)["a"] as List<*>)[2])
        for (bad in listOf("{", "[1,]", "{\"a\" 1}", "tru", "\"abc", "1 2")) {
            assertThrows(Json.ParseError::class.java, { Json.parse(bad) }, bad)
        }
        val e = assertThrows(IllegalArgumentException::class.java) { ArtifactMetadata.parse("""{"format": "other"}""", "x.json") }
        assertTrue(e.message!!.startsWith("x.json:"), e.message)
    }

    @Test
    fun `centred crop keeps the model aspect ratio inside the frame`() {
        val c = CropBox.centred(640, 480, 2f)
        assertEquals(480, c.height)
        assertEquals(240, c.width)
        assertEquals(200, c.left)
        val wide = CropBox.centred(100, 1000, 2f)
        assertEquals(CropBox(0, 400, 100, 600), wide)
        assertThrows(IllegalArgumentException::class.java) { CropBox(700, 0, 800, 10).clampTo(640, 480) }
    }
}
