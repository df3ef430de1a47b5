package org.mobilereid.core

/** The outcome of matching one embedding: the best identity, its similarity, and whether it passed the threshold. */
data class MatchResult(val identity: String?, val bestIdentity: String?, val similarity: Double) {
    val matched: Boolean get() = identity != null
}

/**
 * How enrolled templates are stored and scored (`mobilereid/gallery.py` on the host, the same arithmetic):
 * - [Float32]: the L2-normalised template, cosine = dot product;
 * - [Float16]: the same template as IEEE halves (2 bytes per dimension, [Half]); the probe stays float and the
 *   score is its dot product with the halves, the cosine to within the halves' rounding (the artifact's threshold);
 * - [Int8]: the template's values divided by one global [Int8.scale], rounded half to even (numpy's rule) and
 *   clipped to +-127, one byte per dimension; the probe is quantized the same way and the score is the int32 dot
 *   product times scale^2, which approximates the cosine, so the artifact's calibrated threshold still applies.
 * - [Binary]: the sign of each value (bit set where > 0), 64 per Long; the score is (D - 2 x Hamming) / D (the
 *   cosine of the +-1 vectors), with its own calibrated threshold.
 * - [Pca]: the L2-normalised embedding minus the mean, projected on K principal components and re-normalised, K
 *   floats per template (`pcaK` on the host: fitted there on training images); the score is the dot product of two
 *   projections, a cosine of its own, so the format carries its own calibrated threshold.
 * The scale, projection or threshold comes from the sidecar (`match.gallery`, written by `mobilereid evaluate
 * --write-threshold --gallery-formats int8,binary,pca64 --app-gallery ...`).
 */
sealed class GalleryFormat {
    abstract val name: String
    abstract fun bytesPerTemplate(dim: Int): Int

    /** The same-person threshold of a format that scores on a scale of its own (null: the artifact's cosine one). */
    open val ownThreshold: Double? get() = null

    /** What the gallery keeps, and searches, for one L2-normalised template. */
    internal abstract fun stored(normalised: FloatArray): Any

    /** A probe in the form [similarity] takes: the stored form, except where the format scores the float probe. */
    internal open fun probe(normalised: FloatArray): Any = stored(normalised)

    /** Similarity of a [probe] form to a [stored] template, on this format's scale. */
    internal abstract fun similarity(probe: Any, template: Any, dim: Int): Double

    object Float32 : GalleryFormat() {
        override val name = "float32"
        override fun bytesPerTemplate(dim: Int) = 4 * dim
        override fun stored(normalised: FloatArray): Any = normalised
        override fun similarity(probe: Any, template: Any, dim: Int) = Similarity.dot(probe as FloatArray, template as FloatArray)
    }

    object Float16 : GalleryFormat() {
        override val name = "float16"
        override fun bytesPerTemplate(dim: Int) = 2 * dim

        fun encode(normalised: FloatArray): ShortArray = ShortArray(normalised.size) { Half.fromFloat(normalised[it]) }

        fun score(probe: FloatArray, halves: ShortArray): Double {
            var s = 0.0
            for (i in probe.indices) s += probe[i].toDouble() * Half.toFloat(halves[i])
            return s
        }

        override fun stored(normalised: FloatArray): Any = encode(normalised)
        override fun probe(normalised: FloatArray): Any = normalised  // the probe stays float
        override fun similarity(probe: Any, template: Any, dim: Int) = score(probe as FloatArray, template as ShortArray)
    }

    data class Int8(val scale: Float) : GalleryFormat() {
        init {
            require(scale > 0f && scale.isFinite()) { "int8 gallery scale $scale is not a positive number" }
        }
        override val name = "int8"
        override fun bytesPerTemplate(dim: Int) = dim

        fun encode(normalised: FloatArray): ByteArray =
            ByteArray(normalised.size) { Math.rint((normalised[it] / scale).toDouble()).coerceIn(-127.0, 127.0).toInt().toByte() }

        fun score(a: ByteArray, b: ByteArray): Double {
            var s = 0L
            for (i in a.indices) s += a[i].toLong() * b[i]
            return s.toDouble() * scale.toDouble() * scale.toDouble()
        }

        override fun stored(normalised: FloatArray): Any = encode(normalised)
        override fun similarity(probe: Any, template: Any, dim: Int) = score(probe as ByteArray, template as ByteArray)
    }

    data class Binary(val threshold: Double) : GalleryFormat() {
        init {
            require(threshold in -1.0..1.0) { "binary gallery threshold $threshold is outside [-1, 1]" }
        }
        override val name = "binary"
        override val ownThreshold: Double get() = threshold
        override fun bytesPerTemplate(dim: Int) = 8 * ((dim + 63) / 64)

        fun encode(values: FloatArray): LongArray {
            val words = LongArray((values.size + 63) / 64)
            for (i in values.indices) if (values[i] > 0f) words[i / 64] = words[i / 64] or (1L shl (i % 64))
            return words
        }

        fun score(a: LongArray, b: LongArray, dim: Int): Double {
            var hamming = 0
            for (w in a.indices) hamming += java.lang.Long.bitCount(a[w] xor b[w])
            return (dim - 2.0 * hamming) / dim
        }

        override fun stored(normalised: FloatArray): Any = encode(normalised)
        override fun similarity(probe: Any, template: Any, dim: Int) = score(probe as LongArray, template as LongArray, dim)
    }

    /** [components]: K rows of the embedding size; [threshold]: the same-person threshold on projected cosines. */
    class Pca(val mean: FloatArray, val components: Array<FloatArray>, val threshold: Double) : GalleryFormat() {
        override val ownThreshold: Double get() = threshold

        init {
            require(components.isNotEmpty()) { "pca gallery has no components" }
            require(components.all { it.size == mean.size }) { "pca components and mean have different sizes" }
            require(threshold in -1.0..1.0) { "pca gallery threshold $threshold is not a cosine similarity in [-1, 1]" }
        }
        override val name = "pca${components.size}"
        override fun bytesPerTemplate(dim: Int) = 4 * components.size

        /** An L2-normalised embedding -> its normalised projection (host: `mobilereid.gallery.project`). */
        fun project(normalised: FloatArray): FloatArray {
            require(normalised.size == mean.size) { "embedding has ${normalised.size} values, the projection takes ${mean.size}" }
            val centred = FloatArray(mean.size) { normalised[it] - mean[it] }
            return Similarity.l2Normalised(FloatArray(components.size) { Similarity.dot(centred, components[it]).toFloat() })
        }

        override fun stored(normalised: FloatArray): Any = project(normalised)
        override fun similarity(probe: Any, template: Any, dim: Int) = Similarity.dot(probe as FloatArray, template as FloatArray)
    }
}

/**
 * The demo's gallery of enrolled people.
 *
 * - [enrol] adds an L2-normalised embedding to a person (several views per person are expected: front, back);
 *   the person's template is the L2-normalised mean of its normalised embeddings, the usual way ReID systems pool
 *   several gallery images of one identity into one feature.
 * - [match] compares a probe with every template by the format's similarity; the best one is reported, and it is a match
 *   only if its similarity is >= the threshold (otherwise "unknown"). Ties go to the person enrolled first.
 * - [forget] removes a person.
 */
class Gallery(val embeddingDim: Int, val format: GalleryFormat = GalleryFormat.Float32) {
    private val views = LinkedHashMap<String, MutableList<FloatArray>>()
    private val templates = LinkedHashMap<String, Any>()  // each person's template as the format stores and searches it

    /** Bytes the stored templates take (views are kept in float for re-averaging; a deployment would not). */
    val storedBytes: Int get() = templates.size * format.bytesPerTemplate(embeddingDim)

    val identities: List<String> get() = views.keys.toList()

    fun viewCount(identity: String): Int = views[identity]?.size ?: 0

    fun enrol(identity: String, embedding: FloatArray) {
        require(identity.isNotBlank()) { "identity name is empty" }
        require(embedding.size == embeddingDim) { "embedding has ${embedding.size} values, the gallery holds $embeddingDim" }
        val list = views.getOrPut(identity) { mutableListOf() }
        list.add(Similarity.l2Normalised(embedding))
        templates[identity] = format.stored(template(list))
    }

    /** The stored halves of a person's template (Float16 format), null otherwise. */
    fun halvesOf(identity: String): ShortArray? = if (format == GalleryFormat.Float16) (templates[identity] as ShortArray?)?.copyOf() else null

    /** The stored int8 codes of a person's template (Int8 format), null otherwise. */
    fun codesOf(identity: String): ByteArray? = if (format is GalleryFormat.Int8) (templates[identity] as ByteArray?)?.copyOf() else null

    /** The stored projection of a person's template (Pca format), null otherwise. */
    fun projectionOf(identity: String): FloatArray? = if (format is GalleryFormat.Pca) (templates[identity] as FloatArray?)?.copyOf() else null

    fun forget(identity: String): Boolean {
        templates.remove(identity)
        return views.remove(identity) != null
    }

    fun clear() {
        views.clear()
        templates.clear()
    }

    fun match(embedding: FloatArray, threshold: Double): MatchResult {
        require(embedding.size == embeddingDim) { "embedding has ${embedding.size} values, the gallery holds $embeddingDim" }
        if (templates.isEmpty()) return MatchResult(null, null, Double.NaN)
        val probe = Similarity.l2Normalised(embedding)
        var best: String? = null
        var bestSim = Double.NEGATIVE_INFINITY
        val encoded = format.probe(probe)
        for ((name, template) in templates) {
            val s = format.similarity(encoded, template, embeddingDim)
            if (s > bestSim) { bestSim = s; best = name }
        }
        return MatchResult(if (bestSim >= threshold) best else null, best, bestSim)
    }

    private fun template(list: List<FloatArray>): FloatArray {
        val mean = DoubleArray(embeddingDim)
        for (v in list) for (i in v.indices) mean[i] += v[i].toDouble()
        return Similarity.l2Normalised(FloatArray(embeddingDim) { (mean[it] / list.size).toFloat() })
    }
}
