package org.mobilereid.core

/**
 * A small JSON reader and writer for the metadata sidecars, the evaluation manifest and the result summaries.
 *
 * Why hand-written: `:reid-core` must stay free of Android imports (org.json is Android-only on the JVM side) and is
 * compiled here with the bare Kotlin compiler, with no dependency resolution. The reader accepts RFC 8259 JSON and
 * maps objects to [Map] (insertion order kept), arrays to [List], numbers to [Double] (or [Long] when integral and
 * written without a fraction or exponent), plus strings, booleans and null.
 */
object Json {
    class ParseError(message: String) : IllegalArgumentException(message)

    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val v = p.value()
        p.skipWs()
        if (p.pos != text.length) throw ParseError("trailing characters at offset ${p.pos}")
        return v
    }

    fun write(value: Any?, indent: Int = 2): String = StringBuilder().also { writeTo(it, value, indent, 0) }.toString()

    private fun writeTo(sb: StringBuilder, v: Any?, indent: Int, depth: Int) {
        when (v) {
            null -> sb.append("null")
            is String -> quote(sb, v)
            is Boolean -> sb.append(v)
            is Float -> number(sb, v.toDouble())
            is Double -> number(sb, v)
            is Number -> sb.append(v.toLong())
            is Map<*, *> -> container(sb, v.entries.toList(), '{', '}', indent, depth) { e ->
                quote(sb, e.key.toString()); sb.append(if (indent > 0) ": " else ":"); writeTo(sb, e.value, indent, depth + 1)
            }
            is Iterable<*> -> container(sb, v.toList(), '[', ']', indent, depth) { writeTo(sb, it, indent, depth + 1) }
            is FloatArray -> writeTo(sb, v.toList(), indent, depth)
            is DoubleArray -> writeTo(sb, v.toList(), indent, depth)
            is IntArray -> writeTo(sb, v.toList(), indent, depth)
            is LongArray -> writeTo(sb, v.toList(), indent, depth)
            else -> throw IllegalArgumentException("cannot write ${v::class.simpleName} as JSON")
        }
    }

    private fun number(sb: StringBuilder, d: Double) {
        require(d.isFinite()) { "JSON has no representation for $d" }
        if (d == Math.rint(d) && Math.abs(d) < 1e15) sb.append(d.toLong()).append(".0") else sb.append(d.toString())
    }

    private fun <T> container(sb: StringBuilder, items: List<T>, open: Char, close: Char, indent: Int, depth: Int, item: (T) -> Unit) {
        sb.append(open)
        if (items.isEmpty()) { sb.append(close); return }
        items.forEachIndexed { i, it ->
            if (i > 0) sb.append(',')
            if (indent > 0) sb.append('\n').append(" ".repeat(indent * (depth + 1)))
            item(it)
        }
        if (indent > 0) sb.append('\n').append(" ".repeat(indent * depth))
        sb.append(close)
    }

    private fun quote(sb: StringBuilder, s: String) {
        sb.append('"')
        for (c in s) {
            when {
                c == '"' -> sb.append("\\\"")
                c == '\\' -> sb.append("\\\\")
                c == '\n' -> sb.append("\\n")
                c == '\r' -> sb.append("\\r")
                c == '\t' -> sb.append("\\t")
                c < ' ' -> sb.append(String.format("\\u%04x", c.code))
                else -> sb.append(c)
            }
        }
        sb.append('"')
    }

    private class Parser(val s: String) {
        var pos = 0

        fun skipWs() {
            while (pos < s.length && s[pos] in " \t\r\n") pos++
        }

        fun value(): Any? {
            if (pos >= s.length) throw ParseError("unexpected end of input")
            return when (val c = s[pos]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c.isDigit()) num() else throw ParseError("unexpected '$c' at offset $pos")
            }
        }

        private fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, pos)) throw ParseError("bad literal at offset $pos")
            pos += word.length
            return v
        }

        private fun obj(): Map<String, Any?> {
            val m = LinkedHashMap<String, Any?>()
            pos++
            skipWs()
            if (peek() == '}') { pos++; return m }
            while (true) {
                skipWs()
                if (peek() != '"') throw ParseError("expected a key at offset $pos")
                val k = str()
                skipWs()
                expect(':')
                skipWs()
                m[k] = value()
                skipWs()
                when (peek()) {
                    ',' -> pos++
                    '}' -> { pos++; return m }
                    else -> throw ParseError("expected ',' or '}' at offset $pos")
                }
            }
        }

        private fun arr(): List<Any?> {
            val l = ArrayList<Any?>()
            pos++
            skipWs()
            if (peek() == ']') { pos++; return l }
            while (true) {
                skipWs()
                l.add(value())
                skipWs()
                when (peek()) {
                    ',' -> pos++
                    ']' -> { pos++; return l }
                    else -> throw ParseError("expected ',' or ']' at offset $pos")
                }
            }
        }

        private fun str(): String {
            expect('"')
            val sb = StringBuilder()
            while (true) {
                if (pos >= s.length) throw ParseError("unterminated string")
                val c = s[pos++]
                when (c) {
                    '"' -> return sb.toString()
                    '\\' -> {
                        if (pos >= s.length) throw ParseError("unterminated escape")
                        when (val e = s[pos++]) {
                            '"', '\\', '/' -> sb.append(e)
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000C')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> {
                                if (pos + 4 > s.length) throw ParseError("bad \\u escape")
                                sb.append(s.substring(pos, pos + 4).toInt(16).toChar())
                                pos += 4
                            }
                            else -> throw ParseError("bad escape '\\$e'")
                        }
                    }
                    else -> sb.append(c)
                }
            }
        }

        private fun num(): Any {
            val start = pos
            if (peek() == '-') pos++
            while (pos < s.length && (s[pos].isDigit() || s[pos] in ".eE+-")) pos++
            val t = s.substring(start, pos)
            return if (t.any { it in ".eE" }) t.toDoubleOrNull() ?: throw ParseError("bad number '$t'")
            else t.toLongOrNull() ?: t.toDoubleOrNull() ?: throw ParseError("bad number '$t'")
        }

        private fun peek(): Char = if (pos < s.length) s[pos] else throw ParseError("unexpected end of input")

        private fun expect(c: Char) {
            if (peek() != c) throw ParseError("expected '$c' at offset $pos")
            pos++
        }
    }
}

/** Typed accessors over parsed JSON, failing with the key path in the message. */
internal fun Map<String, Any?>.obj(key: String): Map<String, Any?> =
    (this[key] as? Map<*, *>)?.let { m -> m.entries.associate { it.key.toString() to it.value } }
        ?: throw IllegalArgumentException("'$key' is missing or not an object")

internal fun Map<String, Any?>.objOrNull(key: String): Map<String, Any?>? =
    if (this[key] == null) null else obj(key)

internal fun Map<String, Any?>.str(key: String): String =
    this[key] as? String ?: throw IllegalArgumentException("'$key' is missing or not a string")

internal fun Map<String, Any?>.num(key: String): Double =
    (this[key] as? Number)?.toDouble() ?: throw IllegalArgumentException("'$key' is missing or not a number")

internal fun Map<String, Any?>.int(key: String): Int = num(key).toInt()

internal fun Map<String, Any?>.list(key: String): List<Any?> =
    this[key] as? List<*> ?: throw IllegalArgumentException("'$key' is missing or not a list")
