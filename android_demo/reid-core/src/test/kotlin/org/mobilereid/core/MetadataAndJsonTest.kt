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
