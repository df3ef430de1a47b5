package org.mobilereid.core

/**
 * IEEE 754 binary16 ("half") conversions for the float16 gallery, bit for bit as numpy's `astype(float16)`:
 * round to nearest, ties to even, subnormals kept, values past the largest half (65504, rounding from 65520 up)
 * become infinity. Written out because the JVM's `Float.floatToFloat16` needs Java 20 and `android.util.Half` is
 * Android-only; the core stays pure Kotlin/JVM.
 */
object Half {
    fun fromFloat(value: Float): Short {
        val bits = java.lang.Float.floatToRawIntBits(value)
        val sign = (bits ushr 16) and 0x8000
        val exponent = (bits ushr 23) and 0xFF
        val mantissa = bits and 0x7FFFFF
        if (exponent == 0xFF) return (sign or 0x7C00 or (if (mantissa != 0) 0x200 else 0)).toShort()  // inf, NaN
        val e = exponent - 127 + 15
        if (e >= 0x1F) return (sign or 0x7C00).toShort()
        if (e <= 0) {  // subnormal half (or zero): the implicit bit joins the mantissa, shifted right
            if (e < -10) return sign.toShort()
            val full = mantissa or 0x800000
            val shift = 14 - e
            return (sign or roundShift(full, shift)).toShort()
        }
        // normal: 13 mantissa bits dropped; a carry out of the mantissa correctly bumps the exponent (to inf at most)
        return (sign or ((e shl 10) + roundShift(mantissa, 13))).toShort()
    }

    fun toFloat(half: Short): Float {
        val h = half.toInt() and 0xFFFF
        val sign = (h and 0x8000) shl 16
        val exponent = (h ushr 10) and 0x1F
        val mantissa = h and 0x3FF
        val bits = when {
            exponent == 0x1F -> sign or 0x7F800000 or (mantissa shl 13)
            exponent != 0 -> sign or ((exponent - 15 + 127) shl 23) or (mantissa shl 13)
            mantissa == 0 -> sign
            else -> {  // subnormal half: normalise
                var m = mantissa
                var e = -14
                while (m and 0x400 == 0) { m = m shl 1; e-- }
                sign or ((e + 127) shl 23) or ((m and 0x3FF) shl 13)
            }
        }
        return java.lang.Float.intBitsToFloat(bits)
    }

    /** [value] >> [shift], rounded to nearest with ties to even. */
    private fun roundShift(value: Int, shift: Int): Int {
        val kept = value ushr shift
        val rest = value and ((1 shl shift) - 1)
        val half = 1 shl (shift - 1)
        return if (rest > half || (rest == half && kept and 1 == 1)) kept + 1 else kept
    }
}
