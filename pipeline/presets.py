"""Prompt presets per language. A prompt left empty in settings takes its
language's preset. Placeholders: ``{topic}``, ``{aspect}``, ``{n}``,
``{question}``, ``{answer}``, ``{examples}``; the local RAG answer prompt
(``rag_answer``) takes ``{topic}``, ``{passages}``, ``{question}`` and ``{marker}``;
the passage question writer (``passage_system``, ``passage_user``) takes
``{topic}``, ``{n}``, ``{file}`` (the passage's file, relative to ``data_dir``)
and ``{passage}``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True, slots=True)
class Preset:
    question_system: str
    question_user: str
    followup: str
    system_prompt: str
    avoid: str  # appended to the user prompt when earlier questions exist
    rag_answer: str  # the local backend's answer prompt: material only, else the marker
    passage_system: str  # questions written from one passage of the corpus
    passage_user: str
    # How a question's length is measured: "chars" for languages written without
    # spaces, "words" for space-separated ones (see [questions] min_/max_chars, _words).
    length_unit: str = "chars"
    # The script its questions are written in: "han" (at least one Han
    # character) or "latin" (more Latin letters than CJK characters). A
    # question in another script is screened out as "wrong_language".
    script: str = "han"
    # What a backend without conversation history is sent for a follow-up that
    # does not name the topic ({topic} without its 《》, {question} as asked).
    standalone: str = "关于《{topic}》，{question}"


PRESETS: dict[str, Preset] = {
    "zh": Preset(
        question_system=(
            "你是一个提问助手，专注于《{topic}》的{aspect}方面。"
            "请提出简短、具体、互不相同的问题，每个问题不超过20个字，"
            "只返回一个列表，格式为 ['问题', '问题', ...]，不要其他内容。"
        ),
        question_user="请针对《{topic}》的「{aspect}」提出{n}个不同的问题。",
        followup=(
            "你是一个提问助手，专注于《{topic}》。下面是上一轮的问题和回答。"
            "请根据它提出一个更深入、更具体的追问，不超过30个字，只返回这个问题。"
            "追问要能单独看懂：直接写出所问的人物、地点或事物的名字，不要用“他”“它”“这个”等指代上文。\n"
            "问题：{question}\n回答：{answer}"
        ),
        system_prompt=(
            "你是一个AI助手，专注于回答和《{topic}》相关的问题，"
            "你想帮助用户了解更多背后的故事和文化知识。"
        ),
        avoid="以下问题已经问过，请提出与它们不同的问题：\n{examples}",
        rag_answer=(
            "请只根据下面的资料回答关于《{topic}》的问题，不要使用资料以外的知识，不要编造。"
            "直接给出答案，不要提到“资料”或“材料”这些字眼。"
            "如果资料中没有能回答这个问题的信息，只回复 {marker} ，不要回复其他任何内容。\n\n"
            "资料：\n{passages}\n\n问题：{question}"
        ),
        passage_system=(
            "你是一个提问助手，为《{topic}》出题。下面是一段资料。请只提出这段资料本身能够回答的问题，"
            "最多{n}个，问题之间互不相同。每个问题都必须独立成立：直接写出所问对象的名称，"
            "不要出现“这段资料”“文中”“上文”“本文”“作者”之类的说法。每个问题不超过30个字。"
            "只返回一个列表，格式为 ['问题', '问题', ...]，不要其他内容。"
        ),
        passage_user="资料（出自 {file}）：\n<passage>\n{passage}\n</passage>\n请根据这段资料提出最多{n}个问题。",
    ),
    "en": Preset(
        question_system=(
            "You write questions about {topic}, focusing on its {aspect}. "
            "Write short, specific, distinct questions of at most 15 words each. "
            "Return only a JSON list of strings, like [\"question\", \"question\"], nothing else."
        ),
        question_user="Write {n} different questions about the {aspect} of {topic}.",
        followup=(
            "You write questions about {topic}. Below are the last question and its answer. "
            "Write one deeper, more specific follow-up question of at most 20 words, "
            "and return only that question. It must make sense on its own: name the person, "
            "place or thing it asks about instead of \"he\", \"it\" or \"that\".\nQuestion: {question}\nAnswer: {answer}"
        ),
        system_prompt=(
            "You are an AI assistant that answers questions about {topic}, "
            "helping users learn the stories and culture behind it."
        ),
        avoid="These questions were asked already; write different ones:\n{examples}",
        rag_answer=(
            "Answer the question about {topic} using only the material below; do not use "
            "any other knowledge and do not make anything up. Answer directly, without "
            "mentioning \"the material\". If the material does not contain the answer, "
            "reply with {marker} and nothing else.\n\n"
            "Material:\n{passages}\n\nQuestion: {question}"
        ),
        passage_system=(
            "You write questions about {topic}. Below is a passage. Write at most {n} distinct questions "
            "that the passage itself answers. Each question must stand on its own: name what it asks "
            "about, and never say \"the passage\", \"the text\", \"the author\" or \"above\". "
            "At most 20 words each. Return only a JSON list of strings, like [\"question\", \"question\"], "
            "nothing else."
        ),
        passage_user="Passage (from {file}):\n<passage>\n{passage}\n</passage>\nWrite at most {n} questions this passage answers.",
        length_unit="words",
        script="latin",
        standalone="About {topic}: {question}",
    ),
}
