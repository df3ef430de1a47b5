package org.mobilereid.core

/**
 * Embedding arithmetic. The exporter's sidecars say `"distance": "cosine", "normalize": "l2 before matching"`
 * (TransReID and SCL-net are trained and evaluated with cosine distance on the BN'd feature), so every embedding
 * is L2-normalised once and similarities are dot products. Sums are accumulated in double, so results agree with
 * numpy to ~1e-7 whatever order either side adds in.
 */
object Similarity {
    fun l2Normalised(v: FloatArray): FloatArray {
        var ss = 0.0
        for (x in v) ss += x.toDouble() * x
        val n = Math.sqrt(ss)
        require(n > 0.0 && n.isFinite()) { "embedding has zero or non-finite norm" }
        return FloatArray(v.size) { (v[it] / n).toFloat() }
    }

    fun dot(a: FloatArray, b: FloatArray): Double {
        require(a.size == b.size) { "embedding sizes differ: ${a.size} vs ${b.size}" }
        var s = 0.0
        for (i in a.indices) s += a[i].toDouble() * b[i]
        return s
    }

    fun cosine(a: FloatArray, b: FloatArray): Double = dot(l2Normalised(a), l2Normalised(b))
}
