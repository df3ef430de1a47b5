// Pure Kotlin/JVM: no Android imports, so it builds and tests on any JVM (and in the Python test suite).
plugins {
    alias(libs.plugins.kotlin.jvm)
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation(libs.junit.jupiter)
}

tasks.test {
    useJUnitPlatform()
    // Golden vectors come from the Python side: python -m mobilereid.android_golden OUT --data DATA --sidecar ...
    systemProperty("mobilereid.golden", providers.gradleProperty("mobilereidGolden").getOrElse(""))
    systemProperty("mobilereid.kotlin_out", layout.buildDirectory.dir("golden-out").get().asFile.path)
}
