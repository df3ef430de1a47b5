package org.mobilereid.core

/**
 * Latency statistics over a sliding window of the most recent samples (the overlay shows the live p50) or over a
 * whole evaluation run. Percentiles use linear interpolation between closest ranks, numpy's default
 * (`np.percentile(..., method="linear")`), so the app's p50/p90/p99 equal what the Python evaluator reports for
 * the same samples.
 */
class LatencyStats(private val window: Int = Int.MAX_VALUE) {
    private val samples = ArrayDeque<Double>()

    val count: Int get() = samples.size

    fun add(ms: Double) {
        require(ms.isFinite() && ms >= 0.0) { "latency must be a non-negative number, got $ms" }
        samples.addLast(ms)
        while (samples.size > window) samples.removeFirst()
    }

    fun values(): DoubleArray = samples.toDoubleArray()

    fun mean(): Double = if (samples.isEmpty()) Double.NaN else samples.sum() / samples.size

    fun percentile(p: Double): Double = percentile(values(), p)

    /** The summary block of `mobilereid/device/evaluator.py` (`latency` in `<artifact>.summary.json`). */
    fun summary(): Map<String, Any> = mapOf(
        "p50_ms" to percentile(50.0), "p90_ms" to percentile(90.0), "p99_ms" to percentile(99.0),
        "mean_ms" to mean(), "throughput_per_s" to 1000.0 / mean(), "samples" to count,
    )

    companion object {
        fun percentile(values: DoubleArray, p: Double): Double {
            require(p in 0.0..100.0) { "percentile $p is outside 0..100" }
            if (values.isEmpty()) return Double.NaN
            val sorted = values.sortedArray()
            val rank = p / 100.0 * (sorted.size - 1)
            val lo = Math.floor(rank).toInt()
            val hi = Math.min(lo + 1, sorted.size - 1)
            val t = rank - lo
            val diff = sorted[hi] - sorted[lo]
            // numpy's _lerp: from the nearer end, so the result never leaves [a, b]
            return if (t >= 0.5) sorted[hi] - diff * (1.0 - t) else sorted[lo] + diff * t
        }
    }
}
