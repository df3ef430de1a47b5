package org.mobilereid.core

/** The outcome of matching one embedding: the best identity, its similarity, and whether it passed the threshold. */
data class MatchResult(val identity: String?, val bestIdentity: String?, val similarity: Double) {
    val matched: Boolean get() = identity != null
}

/**
 * The demo's gallery of enrolled people.
 *
 * - [enrol] adds an L2-normalised embedding to a person (several views per person are expected: front, back);
 *   the person's template is the L2-normalised mean of its normalised embeddings, the usual way ReID systems pool
 *   several gallery images of one identity into one feature.
 * - [match] compares a probe with every template by cosine similarity; the best one is reported, and it is a match
 *   only if its similarity is >= the threshold (otherwise "unknown"). Ties go to the person enrolled first.
 * - [forget] removes a person.
 */
class Gallery(val embeddingDim: Int) {
    private val views = LinkedHashMap<String, MutableList<FloatArray>>()
    private val templates = LinkedHashMap<String, FloatArray>()

    val identities: List<String> get() = views.keys.toList()

    fun viewCount(identity: String): Int = views[identity]?.size ?: 0

    fun enrol(identity: String, embedding: FloatArray) {
        require(identity.isNotBlank()) { "identity name is empty" }
        require(embedding.size == embeddingDim) { "embedding has ${embedding.size} values, the gallery holds $embeddingDim" }
        val list = views.getOrPut(identity) { mutableListOf() }
        list.add(Similarity.l2Normalised(embedding))
        templates[identity] = template(list)
    }

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
        for ((name, t) in templates) {
            val s = Similarity.dot(probe, t)
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
