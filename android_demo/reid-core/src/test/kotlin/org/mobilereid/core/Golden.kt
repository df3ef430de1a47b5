package org.mobilereid.core

import java.io.File

/** Where the Python side wrote the golden vectors (`tests/android_golden.py`); the test suite passes it in. */
object Golden {
    val dir: File by lazy {
        val p = System.getProperty("mobilereid.golden") ?: error("system property mobilereid.golden is not set (run through tests/test_android_core.py)")
        File(p).also { require(it.isDirectory) { "$it: golden folder not found" } }
    }

    @Suppress("UNCHECKED_CAST")
    fun json(name: String): Map<String, Any?> = Json.parse(File(dir, name).readText()) as Map<String, Any?>

    @Suppress("UNCHECKED_CAST")
    fun objects(v: Any?): List<Map<String, Any?>> = (v as List<*>).map { it as Map<String, Any?> }

    fun floats(v: Any?): FloatArray = (v as List<*>).map { (it as Number).toFloat() }.toFloatArray()

    fun ints(v: Any?): IntArray = (v as List<*>).map { (it as Number).toInt() }.toIntArray()

    fun doubles(v: Any?): DoubleArray = (v as List<*>).map { (it as Number).toDouble() }.toDoubleArray()
}
