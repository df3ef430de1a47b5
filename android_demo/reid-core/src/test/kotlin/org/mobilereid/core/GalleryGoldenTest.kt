package org.mobilereid.core

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class GalleryGoldenTest {
    private val g = Golden.json("gallery.json")

    private val dim = (g["dim"] as Number).toInt()

    /** The golden views enrolled into a gallery that stores templates as [format]. */
    private fun enrolled(format: GalleryFormat = GalleryFormat.Float32): Gallery {
        val gallery = Gallery(dim, format)
        @Suppress("UNCHECKED_CAST")
        for ((name, views) in g["views"] as Map<String, Any?>) for (v in views as List<*>) gallery.enrol(name, Golden.floats(v))
        return gallery
    }

    /** Every golden probe's best identity, decision at [threshold] and similarity (within [tolerance]). */
    private fun assertDecisions(gallery: Gallery, probes: List<Map<String, Any?>>, threshold: Double, tolerance: Double, label: String) {
        for ((i, p) in probes.withIndex()) {
            val r = gallery.match(Golden.floats(p["probe"]), threshold)
            assertEquals(p["best"], r.bestIdentity, "$label probe $i best identity")
            assertEquals(p["identity"], r.identity, "$label probe $i decision")
            assertEquals((p["similarity"] as Number).toDouble(), r.similarity, tolerance, "$label probe $i similarity")
        }
    }

    /** A format's golden probes: at least 10, with matches and unknowns. */
    private fun formatProbes(q: Map<String, Any?>): List<Map<String, Any?>> {
        val probes = Golden.objects(q["probes"])
        assertTrue(probes.size >= 10 && probes.any { it["identity"] == null } && probes.any { it["identity"] != null })
        return probes
    }

    @Test
    fun `match decisions and similarities equal the Python reference`() {
        val gallery = enrolled()
        val threshold = (g["threshold"] as Number).toDouble()
        val probes = Golden.objects(g["probes"])
        assertTrue(probes.any { it["identity"] == null } && probes.any { it["identity"] != null }, "golden set needs matches and unknowns")
        assertDecisions(gallery, probes, threshold, 1e-6, "float32")
    }

    @Test
    fun `forget removes a person and matching falls back to the others`() {
        val gallery = enrolled()
        val who = g["forget"] as String
        assertTrue(gallery.forget(who))
        assertFalse(gallery.forget(who))
        assertFalse(who in gallery.identities)
        val probes = Golden.objects(g["probes"])
        for ((i, a) in Golden.objects(g["after_forget"]).withIndex()) {
            val r = gallery.match(Golden.floats(probes[i]["probe"]), 2.0)
            assertEquals(a["best"], r.bestIdentity, "probe $i after forget")
            assertEquals((a["similarity"] as Number).toDouble(), r.similarity, 1e-6)
            assertFalse(r.matched)
        }
    }

    @Test
    fun `an int8 gallery stores and scores like the host's int8 format`() {
        @Suppress("UNCHECKED_CAST")
        val q = g["int8"] as Map<String, Any?>
        val scale = (q["scale"] as Number).toFloat()
        val gallery = enrolled(GalleryFormat.Int8(scale))
        @Suppress("UNCHECKED_CAST")
        for ((name, expected) in q["codes"] as Map<String, Any?>) {
            val got = gallery.codesOf(name)!!
            val want = (expected as List<*>).map { (it as Number).toInt() }
            for (i in want.indices) assertTrue(Math.abs(got[i] - want[i]) <= 1, "$name code $i: ${got[i]} vs ${want[i]}")
        }
        assertEquals(gallery.identities.size * dim, gallery.storedBytes)  // one byte per dimension
        // a code one LSB apart moves the int dot product by at most 127 per differing position
        val tolerance = 4 * 127 * scale.toDouble() * scale
        assertDecisions(gallery, formatProbes(q), (g["threshold"] as Number).toDouble(), tolerance, "int8")
        assertThrows(IllegalArgumentException::class.java) { GalleryFormat.Int8(0f) }
    }

    @Test
    fun `a pca gallery stores and scores like the host's pcaK format`() {
        @Suppress("UNCHECKED_CAST")
        val q = g["pca"] as Map<String, Any?>
        val components = (q["components"] as List<*>).map { Golden.floats(it) }.toTypedArray()
        val format = GalleryFormat.Pca(Golden.floats(q["mean"]), components, (q["threshold"] as Number).toDouble())
        assertEquals("pca${components.size}", format.name)
        val gallery = enrolled(format)
        @Suppress("UNCHECKED_CAST")
        for ((name, expected) in q["projections"] as Map<String, Any?>) {
            val got = gallery.projectionOf(name)!!
            val want = Golden.floats(expected)
            for (i in want.indices) assertEquals(want[i].toDouble(), got[i].toDouble(), 1e-5, "$name projection $i")
        }
        assertEquals(gallery.identities.size * 4 * components.size, gallery.storedBytes)  // K floats per template
        assertDecisions(gallery, formatProbes(q), format.threshold, 1e-5, "pca")
        assertThrows(IllegalArgumentException::class.java) { GalleryFormat.Pca(FloatArray(3), arrayOf(FloatArray(4)), 0.5) }
    }

    @Test
    fun `a float16 gallery stores the host's halves and scores like its float16 format`() {
        @Suppress("UNCHECKED_CAST")
        val q = g["float16"] as Map<String, Any?>
        for (pair in q["conversions"] as List<*>) {  // numpy's astype(float16): ties to even, subnormals, overflow
            val (value, bits) = (pair as List<*>).map { it as Number }
            val half = Half.fromFloat(value.toFloat())
            assertEquals(bits.toInt(), half.toInt() and 0xFFFF, "half of $value")
            if (bits.toInt() and 0x7C00 != 0x7C00) {
                assertEquals(numpyHalfToDouble(bits.toInt()), Half.toFloat(half).toDouble(), 0.0, "float of half $bits")
            }
        }
        val gallery = enrolled(GalleryFormat.Float16)
        @Suppress("UNCHECKED_CAST")
        for ((name, expected) in q["halves"] as Map<String, Any?>) {
            val got = gallery.halvesOf(name)!!.map { it.toInt() and 0xFFFF }
            assertEquals((expected as List<*>).map { (it as Number).toInt() }, got, "$name halves")
        }
        assertEquals(gallery.identities.size * 2 * dim, gallery.storedBytes)
        assertDecisions(gallery, formatProbes(q), (q["threshold"] as Number).toDouble(), 1e-5, "float16")
    }

    /** A binary16 pattern's value computed from its fields (no conversion code shared with [Half]). */
    private fun numpyHalfToDouble(bits: Int): Double {
        val sign = if (bits and 0x8000 != 0) -1.0 else 1.0
        val exponent = (bits ushr 10) and 0x1F
        val mantissa = (bits and 0x3FF).toDouble()
        return sign * if (exponent == 0) mantissa * Math.pow(2.0, -24.0) else (1 + mantissa / 1024) * Math.pow(2.0, exponent - 15.0)
    }

    @Test
    fun `a binary gallery scores like the host's sign-bit format`() {
        @Suppress("UNCHECKED_CAST")
        val q = g["binary"] as Map<String, Any?>
        val format = GalleryFormat.Binary((q["threshold"] as Number).toDouble())
        val gallery = enrolled(format)
        assertEquals(gallery.identities.size * 8 * ((dim + 63) / 64), gallery.storedBytes)
        assertDecisions(gallery, formatProbes(q), format.threshold, 1e-12, "binary")
        assertThrows(IllegalArgumentException::class.java) { GalleryFormat.Binary(1.5) }
    }

    @Test
    fun `bad input is refused with a message`() {
        val gallery = Gallery(4)
        assertEquals(null, gallery.match(floatArrayOf(1f, 0f, 0f, 0f), 0.5).bestIdentity)
        val e = assertThrows(IllegalArgumentException::class.java) { gallery.enrol("a", floatArrayOf(1f, 2f)) }
        assertTrue(e.message!!.contains("2 values"))
        assertThrows(IllegalArgumentException::class.java) { gallery.enrol("a", FloatArray(4)) }
        assertThrows(IllegalArgumentException::class.java) { gallery.enrol(" ", floatArrayOf(1f, 0f, 0f, 0f)) }
    }
}
