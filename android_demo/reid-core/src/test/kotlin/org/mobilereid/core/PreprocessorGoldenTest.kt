package org.mobilereid.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File

class PreprocessorGoldenTest {
    private val cases = Golden.objects(Golden.json("preprocess.json")["cases"])

    @Test
    fun `golden cases cover every layout and input type`() {
        val metas = cases.map { ArtifactMetadata.read(File(Golden.dir, it["sidecar"] as String)) }
        assertTrue(metas.any { it.layout == "NCHW" && it.input.dtype == "float32" })
        assertTrue(metas.any { it.layout == "NHWC" && it.input.dtype == "int8" })
        assertTrue(metas.any { it.input.dtype == "uint8" })
        assertTrue(cases.any { it["crop"] != null } && cases.any { it["crop"] == null })
    }

    @Test
    fun `float tensors are bit-identical to the Python reference`() {
        for (c in cases) {
            val meta = ArtifactMetadata.read(File(Golden.dir, c["sidecar"] as String))
            val got = Preprocessor(meta).prepare(Golden.ints(c["argb"]), (c["width"] as Number).toInt(), (c["height"] as Number).toInt(), crop(c))
            val want = Golden.ints(c["expected_float_bits"])
            assertEquals(meta.input.elementCount, got.floats.size, "${c["image"]} ${meta.artifact}: tensor size")
            val bits = IntArray(got.floats.size) { java.lang.Float.floatToRawIntBits(got.floats[it]) }
            val firstDiff = bits.indices.firstOrNull { bits[it] != want[it] }
            assertNull(firstDiff, "${c["image"]} ${meta.artifact}: first differing element $firstDiff " +
                "(kotlin ${firstDiff?.let { got.floats[it] }}, python ${firstDiff?.let { java.lang.Float.intBitsToFloat(want[it]) }})")
        }
    }

    @Test
    fun `quantized inputs equal the Python reference`() {
        var checked = 0
        for (c in cases) {
            val meta = ArtifactMetadata.read(File(Golden.dir, c["sidecar"] as String))
            val got = Preprocessor(meta).prepare(Golden.ints(c["argb"]), (c["width"] as Number).toInt(), (c["height"] as Number).toInt(), crop(c))
            if (c["expected_quantized"] == null) {
                assertNull(got.quantized)
                continue
            }
            assertArrayEquals(Golden.ints(c["expected_quantized"]), got.quantized, "${c["image"]} ${meta.artifact}")
            val bytes = got.quantizedBytes()
            assertEquals(got.quantized!![0].toByte(), bytes[0])
            checked++
        }
        assertTrue(checked >= 2, "no quantized cases were checked")
    }

    private fun crop(c: Map<String, Any?>): CropBox? = (c["crop"] as List<*>?)?.let {
        val v = it.map { n -> (n as Number).toInt() }
        CropBox(v[0], v[1], v[2], v[3])
    }
}
