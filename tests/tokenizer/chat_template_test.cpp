// Unit tests of the chat-template engine. The table of render cases was checked against
// jinja2 3.1 configured as transformers configures it (ImmutableSandboxedEnvironment,
// trim_blocks, lstrip_blocks, loopcontrols, transformers' tojson); the error and hostile
// cases check that failures are clear mil::Errors and that every limit holds, quickly.
#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace mil {
namespace {

using nlohmann::ordered_json;

std::string render(const std::string& source, const ordered_json& context = ordered_json::object()) {
  return ChatTemplate(source, "test.gguf").render(context);
}

// The message of the mil::Error that parsing or rendering throws ("" if none is thrown).
std::string error_of(const std::string& source, const ordered_json& context = ordered_json::object()) {
  try {
    ChatTemplate tmpl(source, "model.gguf");
    tmpl.render(context);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

struct RenderCase {
  const char* name;
  const char* source;
  const char* context;
  const char* expected;
};

// Expected outputs produced by jinja2 (see the comment at the top).
const RenderCase kRenderCases[] = {
    {"Text",
     R"TPL(hello world)TPL",
     R"TPL({})TPL",
     R"TPL(hello world)TPL"},
    {"TrailingNewlineDropped",
     R"TPL(a
)TPL",
     R"TPL({})TPL",
     R"TPL(a)TPL"},
    {"OnlyOneTrailingNewlineDropped",
     R"TPL(a

)TPL",
     R"TPL({})TPL",
     R"TPL(a
)TPL"},
    {"CrLfNormalized",
     R"TPL(a
bc)TPL",
     R"TPL({})TPL",
     R"TPL(a
b
c)TPL"},
    {"Comment",
     R"TPL(a{# hidden #}b)TPL",
     R"TPL({})TPL",
     R"TPL(ab)TPL"},
    {"CommentTrimBlocks",
     R"TPL(a
  {# c #}
b)TPL",
     R"TPL({})TPL",
     R"TPL(a
b)TPL"},
    {"StripMarkers",
     R"TPL(a  
  {{- 'x' -}}  
  b)TPL",
     R"TPL({})TPL",
     R"TPL(axb)TPL"},
    {"BlockStripMarkers",
     R"TPL(a 
 {%- if true -%} 
 x 
 {%- endif -%} 
 b)TPL",
     R"TPL({})TPL",
     R"TPL(axb)TPL"},
    {"TrimBlocks",
     R"TPL({% if true %}
x
{% endif %}
y)TPL",
     R"TPL({})TPL",
     R"TPL(x
y)TPL"},
    {"LstripBlocks",
     R"TPL(a
    {% if true %}
    x
    {% endif %}
b)TPL",
     R"TPL({})TPL",
     R"TPL(a
    x
b)TPL"},
    {"LstripNotAfterText",
     R"TPL(a  {% if true %}b{% endif %})TPL",
     R"TPL({})TPL",
     R"TPL(a  b)TPL"},
    {"LstripNotForVariables",
     R"TPL(  {{ 'x' }}
)TPL",
     R"TPL({})TPL",
     R"TPL(  x)TPL"},
    {"PlusDisablesLstrip",
     R"TPL(a
  {%+ if true %}x{% endif %})TPL",
     R"TPL({})TPL",
     R"TPL(a
  x)TPL"},
    {"PlusDisablesTrim",
     R"TPL({% if true +%}
x{% endif %})TPL",
     R"TPL({})TPL",
     R"TPL(
x)TPL"},
    {"Raw",
     R"TPL({% raw %}{{ x }}{% if %}{% endraw %})TPL",
     R"TPL({})TPL",
     R"TPL({{ x }}{% if %})TPL"},
    {"Literals",
     R"TPL({{ 1 }} {{ -2 }} {{ 1.5 }} {{ 1e3 }} {{ 1_000 }} {{ 'a' "b" }} {{ true }} {{ False }} {{ none }} {{ None }})TPL",
     R"TPL({})TPL",
     R"TPL(1 -2 1.5 1000.0 1000 ab True False None None)TPL"},
    {"StringEscapes",
     R"TPL({{ 'a\nb\t\\\'"' }}|{{ "\x41\u00e9\U0001F600" }}|{{ '\q' }})TPL",
     R"TPL({})TPL",
     R"TPL(a
b	\'"|Aé😀|\q)TPL"},
    {"ListsTuplesDicts",
     R"TPL({{ [1, 'a', [none, true]] }} {{ (1,) }} {{ (1, 2) }} {{ () }} {{ {'a': 1, 'b': [2]} }} {{ {} }})TPL",
     R"TPL({})TPL",
     R"TPL([1, 'a', [None, True]] (1,) (1, 2) () {'a': 1, 'b': [2]} {})TPL"},
    {"StringRepr",
     R"TPL({{ ["it's", 'say "hi"', 'both \' "', 'nl\n'] }})TPL",
     R"TPL({})TPL",
     R"TPL(["it's", 'say "hi"', 'both \' "', 'nl\n'])TPL"},
    {"FloatPrinting",
     R"TPL({{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 1.5e-5 }} {{ 0.0001 }} {{ -0.0 }} {{ 2.5e22 }} {{ 123456789.125 }})TPL",
     R"TPL({})TPL",
     R"TPL(1.0 0.30000000000000004 1e+16 1000000000000000.0 1.5e-05 0.0001 -0.0 2.5e+22 123456789.125)TPL"},
    {"Arithmetic",
     R"TPL({{ 7 + 3 }} {{ 7 - 10 }} {{ 6 * 7 }} {{ 7 / 2 }} {{ 6 / 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -2 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }})TPL",
     R"TPL({})TPL",
     R"TPL(10 -3 42 3.5 2.0 3 -4 1 2 -2 1024 0.25 3.0 0.5)TPL"},
    {"Precedence",
     R"TPL({{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ 2 ** 3 ** 2 }} {{ (1 + 2) ~ 3 }} {{ 1 ~ 2 * 3 }} {{ not true or true }} {{ -3|abs }})TPL",
     R"TPL({})TPL",
     R"TPL(7 9 4 64 33 16 True 3)TPL"},
    {"BoolArithmetic",
     R"TPL({{ true + 1 }} {{ true * 3 }} {{ 'ab' * 2 }} {{ 2 * 'ab' }} {{ 'ab' * 0 }} {{ [1] * 3 }} {{ [1] + [2] }} {{ (1,) + (2,) }})TPL",
     R"TPL({})TPL",
     R"TPL(2 3 abab abab  [1, 1, 1] [1, 2] (1, 2))TPL"},
    {"Concat",
     R"TPL({{ 'a' ~ 1 ~ none ~ true ~ undefined_var ~ 1.0 }} {{ 'a' + 'b' }})TPL",
     R"TPL({})TPL",
     R"TPL(a1NoneTrue1.0 ab)TPL"},
    {"Comparisons",
     R"TPL({{ 1 == 1.0 }} {{ 1 != 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ none == none }} {{ 'a' == 'a' }} {{ [1] == [1.0] }} {{ {'a': 1} == {'a': 1} }} {{ 1 == '1' }} {{ true == 1 }})TPL",
     R"TPL({})TPL",
     R"TPL(True True True False True True True True True True False True)TPL"},
    {"InOperator",
     R"TPL({{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ 'x' in undefined_var }} {{ 'ab' in 'xaby' }})TPL",
     R"TPL({})TPL",
     R"TPL(True True True True False True)TPL"},
    {"LogicReturnsOperands",
     R"TPL({{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' and 'b' }}|{{ none or [] }} {{ not [] }})TPL",
     R"TPL({})TPL",
     R"TPL(x b |[] True)TPL"},
    {"Conditional",
     R"TPL({{ 'y' if true else 'n' }} {{ 'y' if false else 'n' }} [{{ 'y' if false }}] {{ 'a' if false else 'b' if true else 'c' }})TPL",
     R"TPL({})TPL",
     R"TPL(y n [] b)TPL"},
    {"Variables",
     R"TPL({{ user.name }} {{ user['name'] }} {{ user.missing }}|{{ user['missing'] }}|{{ items[1] }} {{ items[-1] }} {{ items.0 }} [{{ items[10] }}])TPL",
     R"TPL({"user": {"name": "Ann"}, "items": [10, 20, 30]})TPL",
     R"TPL(Ann Ann ||20 30 10 [])TPL"},
    {"Slicing",
     R"TPL({{ s[1:] }} {{ s[:-1] }} {{ s[::-1] }} {{ s[1:4:2] }} {{ xs[1:] }} {{ xs[::-1] }} {{ xs[:-1] }} {{ xs[5:] }} {{ xs[-2:] }} {{ s[10:] }}|{{ 'héllo'[1:3] }})TPL",
     R"TPL({"s": "abcdef", "xs": [1, 2, 3]})TPL",
     R"TPL(bcdef abcde fedcba bd [2, 3] [3, 2, 1] [1, 2] [] [2, 3] |él)TPL"},
    {"StringIndexUnicode",
     R"TPL({{ s[1] }} {{ s[-1] }} {{ s|length }} {{ s|list }} {{ s|reverse }})TPL",
     R"TPL({"s": "añ😀"})TPL",
     R"TPL(ñ 😀 3 ['a', 'ñ', '😀'] 😀ña)TPL"},
    {"DictAttributeVsMethod",
     R"TPL({{ d.items is callable }}|{{ d['items'] }}|{{ d.other }} {{ d['keys'] is defined }})TPL",
     R"TPL({"d": {"items": "I", "other": "O"}})TPL",
     R"TPL(True|I|O True)TPL"},
    {"SetAndScopes",
     R"TPL({% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}{% for i in [1] %}{% set x = 3 %}{{ x }}{% endfor %}{{ x }})TPL",
     R"TPL({})TPL",
     R"TPL(232)TPL"},
    {"LoopScopeFreshEachIteration",
     R"TPL({% set x = 0 %}{% for i in [1,2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }})TPL",
     R"TPL({})TPL",
     R"TPL(01020)TPL"},
    {"LoopVariableDoesNotLeak",
     R"TPL({% set i = 7 %}{% for i in [1, 2] %}{% endfor %}{{ i }}{% for j in [1] %}{% endfor %}[{{ j }}])TPL",
     R"TPL({})TPL",
     R"TPL(7[])TPL"},
    {"SetTuple",
     R"TPL({% set a, b = [1, 2] %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }})TPL",
     R"TPL({})TPL",
     R"TPL(12(1, 2))TPL"},
    {"SetBlock",
     R"TPL({% set x %}  a {{ 1 }} {% endset %}[{{ x }}]{% set y | upper | trim %} b {% endset %}[{{ y }}])TPL",
     R"TPL({})TPL",
     R"TPL([  a 1 ][B])TPL"},
    {"Namespace",
     R"TPL({% set ns = namespace(count=0, seen=false) %}{% for i in range(3) %}{% set ns.count = ns.count + i %}{% endfor %}{{ ns.count }} {{ ns.seen }} {{ ns.missing is defined }})TPL",
     R"TPL({})TPL",
     R"TPL(3 False False)TPL"},
    {"NamespaceFromDict",
     R"TPL({% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }})TPL",
     R"TPL({})TPL",
     R"TPL(12)TPL"},
    {"LoopVariables",
     R"TPL({% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.depth }};{% endfor %})TPL",
     R"TPL({})TPL",
     R"TPL(1032TrueFalse31;2121FalseFalse31;3210FalseTrue31;)TPL"},
    {"LoopPrevNextCycle",
     R"TPL({% for x in [1,2,3] %}{{ loop.previtem|default('-') }}{{ loop.nextitem|default('-') }}{{ loop.cycle('a','b') }} {% endfor %})TPL",
     R"TPL({})TPL",
     R"TPL(-2a 13b 2-a )TPL"},
    {"ForElse",
     R"TPL({% for x in [] %}x{% else %}empty{% endfor %}{% for x in [1] %}{{ x }}{% else %}no{% endfor %})TPL",
     R"TPL({})TPL",
     R"TPL(empty1)TPL"},
    {"ForFilter",
     R"TPL({% for x in range(10) if x is even %}{{ x }}{{ '/' ~ loop.length }},{% else %}none{% endfor %})TPL",
     R"TPL({})TPL",
     R"TPL(0/5,2/5,4/5,6/5,8/5,)TPL"},
    {"ForUnpack",
     R"TPL({% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %})TPL",
     R"TPL({"d": {"z": 1, "a": 2}})TPL",
     R"TPL(z=1;a=2;37)TPL"},
    {"ForOverDictAndString",
     R"TPL({% for k in d %}{{ k }}{% endfor %}|{% for c in 'hé' %}[{{ c }}]{% endfor %}|{% for x in undefined_var %}x{% endfor %})TPL",
     R"TPL({"d": {"b": 1, "a": 2}})TPL",
     R"TPL(ba|[h][é]|)TPL"},
    {"BreakContinue",
     R"TPL({% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %})TPL",
     R"TPL({})TPL",
     R"TPL(0134)TPL"},
    {"NestedLoops",
     R"TPL({% for i in range(2) %}{% for j in range(2) %}{{ i }}{{ j }}{{ loop.index }} {% endfor %}{{ loop.index }}|{% endfor %})TPL",
     R"TPL({})TPL",
     R"TPL(001 012 1|101 112 2|)TPL"},
    {"IfElifElse",
     R"TPL({% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %} {% endfor %})TPL",
     R"TPL({})TPL",
     R"TPL(one two many )TPL"},
    {"Macro",
     R"TPL({% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(punct='.', name='C') }})TPL",
     R"TPL({})TPL",
     R"TPL(Hi A! Hi B? Hi C.)TPL"},
    {"MacroMissingArgIsUndefined",
     R"TPL({% macro f(a, b) %}[{{ a }}|{{ b }}|{{ b is defined }}]{% endmacro %}{{ f(1) }})TPL",
     R"TPL({})TPL",
     R"TPL([1||False])TPL"},
    {"MacroSeesTopLevelAtCallTime",
     R"TPL({% macro m() %}{{ z }}{% endmacro %}{% set z = 3 %}{{ m() }}{% set z = 4 %}{{ m() }})TPL",
     R"TPL({})TPL",
     R"TPL(34)TPL"},
    {"MacroVarargsKwargs",
     R"TPL({% macro f(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ f(1, 2, 3, k='v') }})TPL",
     R"TPL({})TPL",
     R"TPL(1(2, 3){'k': 'v'})TPL"},
    {"MacroRecursion",
     R"TPL({% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(5) }})TPL",
     R"TPL({})TPL",
     R"TPL(120)TPL"},
    {"FilterBlock",
     R"TPL({% filter upper %}abc {{ 'd' }}{% endfilter %})TPL",
     R"TPL({})TPL",
     R"TPL(ABC D)TPL"},
    {"WithBlock",
     R"TPL({% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}])TPL",
     R"TPL({})TPL",
     R"TPL(3[])TPL"},
    {"Generation",
     R"TPL({% generation %}gen {{ 1 }}{% endgeneration %})TPL",
     R"TPL({})TPL",
     R"TPL(gen 1)TPL"},
    {"Tests",
     R"TPL({{ x is defined }} {{ y is undefined }} {{ none is none }} {{ 1 is number }} {{ true is number }} {{ true is integer }} {{ 1.0 is float }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 'a' is sequence }} {{ true is boolean }} {{ false is false }} {{ true is true }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 2 is in [1, 2] }} {{ 'ab' is lower }} {{ 'AB' is upper }} {{ 1 is eq 1 }} {{ 1 is equalto 2 }} {{ 1 is ne 2 }} {{ 1 is lt 2 }} {{ 1 is gt 2 }} {{ 1 is ge 1 }} {{ 1 is le 0 }} {{ none is sameas none }} {{ x is not none }} {{ 'upper' is filter }} {{ 'odd' is test }} {{ range is callable }})TPL",
     R"TPL({"x": 1})TPL",
     R"TPL(True True True True True False True True True True True True True True True True True False True True True True False True True False True False True True True True True)TPL"},
    {"TestsOnUndefined",
     R"TPL({{ u is iterable }} {{ u is sequence }} {{ u is string }} {{ u is mapping }} {{ u is none }})TPL",
     R"TPL({})TPL",
     R"TPL(True True False False False)TPL"},
    {"FilterDefault",
     R"TPL({{ u|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} {{ none|default('d') }} {{ none|d('d', boolean=true) }} {{ 0|default(5) }} [{{ u|default }}])TPL",
     R"TPL({})TPL",
     R"TPL(d  d None d 0 [])TPL"},
    {"FilterLengthCount",
     R"TPL({{ 'héllo'|length }} {{ [1, 2]|count }} {{ {'a': 1}|length }} {{ u|length }})TPL",
     R"TPL({})TPL",
     R"TPL(5 2 1 0)TPL"},
    {"FilterStrings",
     R"TPL({{ '  a b  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'AbC'|lower }}|{{ 'abc'|upper }}|{{ 'hello wORLD-foo(bar'|title }}|{{ 'hELLO world'|capitalize }}|{{ 'a-b-a'|replace('a', 'x') }}|{{ 'aaa'|replace('a', 'b', 2) }}|{{ 'abc'|replace('', '-') }}|{{ 123|string ~ 'x' }}|{{ 'one two  three'|wordcount }}|{{ 'ab'|center(6) }}|)TPL",
     R"TPL({})TPL",
     R"TPL(a b|a|abc|ABC|Hello World-Foo(Bar|Hello world|x-b-x|bba|-a-b-c-|123x|3|  ab  |)TPL"},
    {"FilterIndent",
     R"TPL({{ 'a
b

c'|indent }}|{{ 'a
b'|indent(2, true) }}|{{ 'a

b'|indent(2, blank=true) }}|{{ 'a
b'|indent('> ') }})TPL",
     R"TPL({})TPL",
     R"TPL(a
    b

    c|  a
  b|a
  
  b|a
> b)TPL"},
    {"FilterJoinFirstLast",
     R"TPL({{ [1, 'a', none]|join }} {{ ['a', 'b']|join(', ') }} {{ users|join(',', attribute='name') }} {{ [3, 1]|first }} {{ 'abc'|last }} [{{ []|first }}] {{ users|map(attribute='name')|join('+') }})TPL",
     R"TPL({"users": [{"name": "x"}, {"name": "y"}]})TPL",
     R"TPL(1aNone a, b x,y 3 c [] x+y)TPL"},
    {"FilterListString",
     R"TPL({{ 'ab'|list }} {{ {'a': 1}|list }} {{ (1, 2)|list }} {{ [1, [2]]|string }} {{ none|string }})TPL",
     R"TPL({})TPL",
     R"TPL(['a', 'b'] ['a'] [1, 2] [1, [2]] None)TPL"},
    {"FilterNumbers",
     R"TPL({{ '42'|int + 1 }} {{ ' 7 '|int }} {{ '3.9'|int }} {{ 'x'|int }} {{ 'x'|int(-1) }} {{ 3.99|int }} {{ true|int }} {{ '0x1A'|int(0, 16) }} {{ '2.5'|float }} {{ 'x'|float }} {{ 3|float }} {{ -3|abs }} {{ -2.5|abs }})TPL",
     R"TPL({})TPL",
     R"TPL(43 7 3 0 -1 3 1 26 2.5 0.0 3.0 3 2.5)TPL"},
    {"FilterRound",
     R"TPL({{ 2.5|round }} {{ 3.5|round }} {{ -2.5|round }} {{ 2.675|round(2) }} {{ 3|round }} {{ 3.14159|round(3) }} {{ 2.1|round(0, 'ceil') }} {{ 2.9|round(0, 'floor') }} {{ 1.25|round(1) }})TPL",
     R"TPL({})TPL",
     R"TPL(2.0 4.0 -2.0 2.67 3 3.142 3.0 2.0 1.2)TPL"},
    {"FilterSorting",
     R"TPL({{ [3, 1, 2]|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ ['b', 'A', 'a', 'B']|sort }} {{ ['b', 'A', 'a']|sort(case_sensitive=true) }} {{ users|sort(attribute='age')|map(attribute='name')|join }} {{ d|dictsort }} {{ d|dictsort(reverse=true) }} {{ d|dictsort(by='value') }})TPL",
     R"TPL({"users": [{"name": "x", "age": 3}, {"name": "y", "age": 1}, {"name": "z", "age": 2}], "d": {"b": 2, "A": 3, "c": 1}})TPL",
     R"TPL([1, 2, 3] [3, 2, 1] ['A', 'a', 'b', 'B'] ['A', 'a', 'b'] yzx [('A', 3), ('b', 2), ('c', 1)] [('c', 1), ('b', 2), ('A', 3)] [('c', 1), ('b', 2), ('A', 3)])TPL"},
    {"FilterSelect",
     R"TPL({{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='c')|join }} {{ msgs|rejectattr('role', 'eq', 'user')|map(attribute='c')|join }} {{ msgs|selectattr('tool')|list|length }} {{ msgs|selectattr('tool', 'defined')|list|length }} {{ msgs|rejectattr('tool', 'none')|list|length }} {{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [0, 1, '', 'a']|select|list }} {{ [1, 5, 10]|select('gt', 3)|list }})TPL",
     R"TPL({"msgs": [{"role": "user", "c": "a"}, {"role": "assistant", "c": "b", "tool": null}, {"role": "user", "c": "c", "tool": 1}]})TPL",
     R"TPL(ac b 1 2 2 [1, 3] [2, 4] [1, 'a'] [5, 10])TPL"},
    {"GeneratorsAreTruthyAndSpent",
     R"TPL({% set g = [1, 2]|select('odd') %}{{ 'T' if [2]|select('odd') else 'F' }}{{ g|list }}{{ g|list }})TPL",
     R"TPL({})TPL",
     R"TPL(T[1][])TPL"},
    {"FilterMap",
     R"TPL({{ ['a', 'b']|map('upper')|list }} {{ [1.5, 2.5]|map('round')|list }} {{ users|map(attribute='x', default='?')|list }} {{ ['a,b', 'c']|map('replace', ',', ';')|join('|') }})TPL",
     R"TPL({"users": [{"x": 1}, {}]})TPL",
     R"TPL(['A', 'B'] [2.0, 2.0] [1, '?'] a;b|c)TPL"},
    {"FilterUniqueReverseItems",
     R"TPL({{ [1, 2, 1, 'A', 'a']|unique|list }} {{ [1, 2, 3]|reverse|list }} {{ 'abc'|reverse }} {{ {'a': 1, 'b': 2}|items|list }} {{ u|items|list }})TPL",
     R"TPL({})TPL",
     R"TPL([1, 2, 'A'] [3, 2, 1] cba [('a', 1), ('b', 2)] [])TPL"},
    {"FilterSumMinMax",
     R"TPL({{ [1, 2, 3]|sum }} {{ [1.5, 2]|sum }} {{ users|sum(attribute='n') }} {{ [3, 1, 2]|min }} {{ [3, 1, 2]|max }} {{ ['b', 'A']|min }} {{ users|max(attribute='n') }})TPL",
     R"TPL({"users": [{"n": 1}, {"n": 5}]})TPL",
     R"TPL(6 3.5 6 1 3 A {'n': 5})TPL"},
    {"FilterBatchAttrFormat",
     R"TPL({{ [1, 2, 3]|batch(2)|list }} {{ [1, 2, 3]|batch(2, 0)|list }} {{ '%s-%d'|format('a', 3) }} {{ '%05.1f|%-4s|%3d|%x'|format(3.14159, 'ab', 7, 255) }} {{ '%(a)s'|format(a=1) }})TPL",
     R"TPL({})TPL",
     R"TPL([[1, 2], [3]] [[1, 2], [3, 0]] a-3 003.1|ab  |  7|ff 1)TPL"},
    {"FilterEscapeSafe",
     R"TPL({{ '<a href="x">&\'</a>'|e }} {{ '<b>'|escape }} {{ '<b>'|safe }})TPL",
     R"TPL({})TPL",
     R"TPL(&lt;a href=&#34;x&#34;&gt;&amp;&#39;&lt;/a&gt; &lt;b&gt; <b>)TPL"},
    {"ToJson",
     R"TPL({{ v|tojson }})TPL",
     R"TPL({"v": {"b": [1, 2.5, "é\n\"\\", null, true, false], "a": {}, "c": [], "d": " \u0001"}})TPL",
     R"TPL({"b": [1, 2.5, "é\n\"\\", null, true, false], "a": {}, "c": [], "d": " \u0001"})TPL"},
    {"ToJsonIndentAndOptions",
     R"TPL({{ v|tojson(indent=2) }}|{{ v|tojson(indent='	') }}|{{ v|tojson(sort_keys=true) }}|{{ v|tojson(separators=(',', ':')) }}|{{ 'é😀'|tojson(ensure_ascii=true) }}|{{ {1: 'a', none: 'b', 1.5: 'c'}|tojson }})TPL",
     R"TPL({"v": {"z": [1, {"y": null}], "a": "x", "e": {}}})TPL",
     R"TPL({
  "z": [
    1,
    {
      "y": null
    }
  ],
  "a": "x",
  "e": {}
}|{
	"z": [
		1,
		{
			"y": null
		}
	],
	"a": "x",
	"e": {}
}|{"a": "x", "e": {}, "z": [1, {"y": null}]}|{"z":[1,{"y":null}],"a":"x","e":{}}|"\u00e9\ud83d\ude00"|{"1": "a", "null": "b", "1.5": "c"})TPL"},
    {"ToJsonScalars",
     R"TPL({{ 1|tojson }} {{ 1.0|tojson }} {{ 'a'|tojson }} {{ none|tojson }} {{ true|tojson }} {{ (1, 2)|tojson }})TPL",
     R"TPL({})TPL",
     R"TPL(1 1.0 "a" null true [1, 2])TPL"},
    {"StringMethods",
     R"TPL({{ s.startswith('He') }} {{ s.endswith(('x', 'd')) }} {{ ' x '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|{{ s.upper() }} {{ s.lower() }} {{ 'they\'re bill'.title() }} {{ 'aBC'.capitalize() }} {{ s.replace('l', 'L') }} {{ s.replace('l', 'L', 1) }} {{ s.count('l') }} {{ s.find('o') }} {{ s.find('z') }} {{ s.rfind('o') }} {{ '-'.join(['a', 'b']) }} {{ '12'.isdigit() }} {{ 'ab'.isalpha() }} {{ ' '.isspace() }} {{ 'ab'.islower() }} {{ 'AB'.isupper() }} {{ 'pre_x'.removeprefix('pre_') }})TPL",
     R"TPL({"s": "Hello World"})TPL",
     R"TPL(True True x|a|a|a|HELLO WORLD hello world They'Re Bill Abc HeLLo WorLd HeLlo World 3 4 -1 7 a-b True True True True True x)TPL"},
    {"StringSplit",
     R"TPL({{ 'a,b,,c'.split(',') }} {{ '  a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ '  a  b  c '.split(none, 1) }} {{ 'a
b
c'.splitlines() }} {{ ''.split() }} {{ ''.split(',') }})TPL",
     R"TPL({})TPL",
     R"TPL(['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c'] ['a,b', 'c'] ['a', 'b  c '] ['a', 'b', 'c'] [] [''])TPL"},
    {"StringFormat",
     R"TPL({{ '{} and {}'.format('a', 1) }} {{ '{1}{0}'.format('a', 'b') }} {{ '{x}!'.format(x=3) }} {{ '{{}}{}'.format(none) }} {{ '{!r}'.format('q') }} {{ '%s=%r' % ('k', 'v') }} {{ '%d%%' % 50 }} {{ '%s' % [1] }})TPL",
     R"TPL({})TPL",
     R"TPL(a and 1 ba 3! {}None 'q' k='v' 50% [1])TPL"},
    {"DictMethods",
     R"TPL({{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }} {{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 0) }} {{ d.keys()|length }} {{ 'a' in d.keys() }})TPL",
     R"TPL({"d": {"a": 1, "b": 2}})TPL",
     R"TPL(['a', 'b'] [1, 2] [('a', 1), ('b', 2)] 1 None 0 2 True)TPL"},
    {"ListMethods",
     R"TPL({{ xs.index(2) }} {{ xs.count(1) }})TPL",
     R"TPL({"xs": [1, 2, 1]})TPL",
     R"TPL(1 2)TPL"},
    {"Range",
     R"TPL({{ range(3)|list }} {{ range(1, 4)|list }} {{ range(10, 0, -3)|list }} {{ range(0)|list }} {{ range(3)|length }})TPL",
     R"TPL({})TPL",
     R"TPL([0, 1, 2] [1, 2, 3] [10, 7, 4, 1] [] 3)TPL"},
    {"DictGlobal",
     R"TPL({{ dict(a=1, b='x') }} {{ dict({'k': 1}, z=2) }})TPL",
     R"TPL({})TPL",
     R"TPL({'a': 1, 'b': 'x'} {'k': 1, 'z': 2})TPL"},
    {"UndefinedPrintsEmpty",
     R"TPL([{{ nothing }}][{{ nothing|upper }}][{{ nothing|trim }}][{{ nothing|join(',') }}][{{ nothing|list }}])TPL",
     R"TPL({})TPL",
     R"TPL([][][][][[]])TPL"},
    {"NoneAttributeIsUndefined",
     R"TPL([{{ n.x }}][{{ n['x'] }}][{{ 1.x }}][{{ 'abc'.nope }}])TPL",
     R"TPL({"n": null})TPL",
     R"TPL([][][][])TPL"},
    {"ListCall",
     R"TPL({{ (messages|first).role }} {{ messages[0]['content']|trim }} {{ messages|length }})TPL",
     R"TPL({"messages": [{"role": "user", "content": " hi "}]})TPL",
     R"TPL(user hi 1)TPL"},
    {"DottedFilterArgs",
     R"TPL({{ (msgs|selectattr('a.b', 'equalto', 1)|list|length) }})TPL",
     R"TPL({"msgs": [{"a": {"b": 1}}, {"a": {"b": 2}}]})TPL",
     R"TPL(1)TPL"},
    {"AdjacentStringsAndLineContinuation",
     R"TPL({{ 'a' 'b' "c" }})TPL",
     R"TPL({})TPL",
     R"TPL(abc)TPL"},
    {"IntegerAttributeAccess",
     R"TPL({{ pair.0 }}{{ pair.1 }})TPL",
     R"TPL({"pair": ["x", "y"]})TPL",
     R"TPL(xy)TPL"},
    {"IsNotTests",
     R"TPL({{ x is not defined }} {{ not x is defined }} {{ x is not string }})TPL",
     R"TPL({"x": 1})TPL",
     R"TPL(False False True)TPL"},
    {"ContextKeyOrder",
     R"TPL({% for k, v in tool.items() %}{{ k }} {% endfor %}{{ tool|tojson }})TPL",
     R"TPL({"tool": {"zeta": 1, "alpha": 2, "mid": {"y": 1, "b": 2}}})TPL",
     R"TPL(zeta alpha mid {"zeta": 1, "alpha": 2, "mid": {"y": 1, "b": 2}})TPL"},
    {"LargeIntegers",
     R"TPL({{ 9223372036854775807 }} {{ 2 ** 62 }} {{ -9223372036854775807 - 1 }})TPL",
     R"TPL({})TPL",
     R"TPL(9223372036854775807 4611686018427387904 -9223372036854775808)TPL"},
    {"ComplexChat",
     R"TPL({%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {{- '<|system|>\n' + message['content'] + eos_token }}
    {%- elif message['role'] == 'user' %}
        {{- '<|user|>\n' + message['content'] + eos_token }}
    {%- else %}
        {{- '<|assistant|>\n'  + message['content'] + eos_token }}
    {%- endif %}
    {%- if loop.last and add_generation_prompt %}
        {{- '<|assistant|>' }}
    {%- endif %}
{%- endfor %})TPL",
     R"TPL({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], "eos_token": "</s>", "add_generation_prompt": true})TPL",
     R"TPL(<|system|>
S</s><|user|>
U</s><|assistant|>)TPL"},
};

class ChatTemplateRender : public testing::TestWithParam<RenderCase> {};

TEST_P(ChatTemplateRender, MatchesJinja2) {
  const RenderCase& c = GetParam();
  try {
    EXPECT_EQ(render(c.source, ordered_json::parse(c.context)), c.expected);
  } catch (const Error& e) {
    ADD_FAILURE() << e.what();
  }
}

std::string case_name(const testing::TestParamInfo<RenderCase>& param_info) { return param_info.param.name; }

INSTANTIATE_TEST_SUITE_P(Jinja2, ChatTemplateRender, testing::ValuesIn(kRenderCases), case_name);

TEST(ChatTemplate, AcceptsSortedJsonContext) {
  nlohmann::json context = {{"b", 1}, {"a", 2}};
  EXPECT_EQ(ChatTemplate("{{ a }}{{ b }}", "t").render(context), "21");
}

TEST(ChatTemplate, MovesAndRendersRepeatedly) {
  ChatTemplate a("{{ x }}", "t");
  ChatTemplate b = std::move(a);
  EXPECT_EQ(b.render(ordered_json{{"x", 1}}), "1");
  EXPECT_EQ(b.render(ordered_json{{"x", 2}}), "2");
}

TEST(ChatTemplate, StrftimeNowFormatsTheLocalTime) {
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  EXPECT_EQ(render("{{ strftime_now('%Y') }}"), std::to_string(local.tm_year + 1900));
}

TEST(ChatTemplate, RaiseExceptionFailsWithTheMessage) {
  std::string error = error_of("line1\n{{ raise_exception('Conversation roles must alternate') }}");
  EXPECT_EQ(error, "chat template in model.gguf, line 2: Conversation roles must alternate");
}

TEST(ChatTemplateErrors, UnsupportedTagsNameTheLine) {
  EXPECT_EQ(error_of("a\nb\n{% include 'x.j2' %}"), "chat template in model.gguf, line 3: unsupported tag 'include'");
  EXPECT_NE(error_of("{% import 'os' as os %}").find("unsupported tag 'import'"), std::string::npos);
  EXPECT_NE(error_of("{% extends 'base' %}").find("unsupported tag 'extends'"), std::string::npos);
  EXPECT_NE(error_of("{% from 'x' import y %}").find("unsupported tag 'from'"), std::string::npos);
  EXPECT_NE(error_of("{% block b %}{% endblock %}").find("unsupported tag 'block'"), std::string::npos);
  EXPECT_NE(error_of("{% do x.append(1) %}").find("unsupported tag 'do'"), std::string::npos);
  EXPECT_NE(error_of("{% call m() %}x{% endcall %}").find("call blocks are not supported"), std::string::npos);
  EXPECT_NE(error_of("{% for x in xs recursive %}{% endfor %}").find("recursive"), std::string::npos);
}

TEST(ChatTemplateErrors, SyntaxErrors) {
  EXPECT_NE(error_of("{% for x in xs %}").find("line 1: unexpected end of template, expected 'else' or 'endfor'"),
            std::string::npos);
  EXPECT_NE(error_of("{% if x %}{% endfor %}").find("unexpected tag 'endfor'"), std::string::npos);
  EXPECT_NE(error_of("{{ x | nosuchfilter }}").find("unsupported filter 'nosuchfilter'"), std::string::npos);
  EXPECT_NE(error_of("{{ x is nosuchtest }}").find("unsupported test 'nosuchtest'"), std::string::npos);
  EXPECT_NE(error_of("{{ 'abc }}").find("unterminated string"), std::string::npos);
  EXPECT_NE(error_of("{{ x ").find("missing '}}'"), std::string::npos);
  EXPECT_NE(error_of("{# never closed").find("unterminated comment"), std::string::npos);
  EXPECT_NE(error_of("{% break %}").find("'break' outside of a for loop"), std::string::npos);
  EXPECT_NE(error_of("{{ f(*args) }}").find("*args"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 + }}").find("expected an expression"), std::string::npos);
  EXPECT_NE(error_of("{{ 99999999999999999999 }}").find("integer literal too large"), std::string::npos);
}

TEST(ChatTemplateErrors, RuntimeErrors) {
  EXPECT_EQ(error_of("\n\n{{ message.content }}"), "chat template in model.gguf, line 3: 'message' is undefined");
  EXPECT_NE(error_of("{{ x['k'] }}").find("'x' is undefined"), std::string::npos);
  EXPECT_NE(error_of("{{ u + 1 }}").find("'u' is undefined"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 + 'a' }}").find("unsupported operand type(s) for +: 'int' and 'str'"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 / 0 }}").find("division by zero"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 // 0 }}").find("division or modulo by zero"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 < 'a' }}").find("not supported between"), std::string::npos);
  EXPECT_NE(error_of("{{ u|tojson }}").find("Undefined is not JSON serializable"), std::string::npos);
  EXPECT_NE(error_of("{{ ([1]|select)|length }}").find("has no len()"), std::string::npos);
  EXPECT_NE(error_of("{{ 'a'() }}").find("not callable"), std::string::npos);
  EXPECT_NE(error_of("{% macro f(a) %}{% endmacro %}{{ f(1, 2) }}").find("takes not more than 1"), std::string::npos);
  EXPECT_NE(error_of("{% macro f(a) %}{% endmacro %}{{ f(b=1) }}").find("no keyword argument 'b'"), std::string::npos);
  EXPECT_NE(error_of("{% set x = 1 %}{% set x.a = 1 %}").find("non-namespace"), std::string::npos);
  EXPECT_NE(error_of("{% set a, b = [1] %}").find("unpack"), std::string::npos);
  EXPECT_NE(error_of("{{ 9223372036854775807 + 1 }}").find("integer overflow"), std::string::npos);
  EXPECT_NE(error_of("{{ 'x'.split('') }}").find("empty separator"), std::string::npos);
  EXPECT_NE(error_of("{{ 'a'.nosuchmethod() }}").find("has no attribute 'nosuchmethod'"), std::string::npos);
  EXPECT_EQ(ChatTemplate("{{ x }}", "t").render(ordered_json{{"x", 1}}), "1");
  EXPECT_THROW(ChatTemplate("{{ x }}", "t").render(ordered_json::array()), Error);
}

// Each hostile template must fail with `expected` in the message, within a few seconds.
void expect_fails_quickly(const std::string& source, const std::string& expected) {
  auto start = std::chrono::steady_clock::now();
  std::string error = error_of(source);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(error.find(expected), std::string::npos) << "template: " << source << "\nerror: " << error;
  EXPECT_LT(seconds, 5.0) << source;
}

TEST(ChatTemplateSandbox, PythonInternalsAreUnreachable) {
  // jinja2's sandbox prints an unsafe attribute as "" and fails when it is used further.
  EXPECT_EQ(render("[{{ ''.__class__ }}][{{ range.__globals__ }}][{{ x.__dict__ }}][{{ ''.format.__globals__ }}]",
                   ordered_json{{"x", {{"a", 1}}}}),
            "[][][][]");
  expect_fails_quickly("{{ ''.__class__.__mro__ }}", "security error: access to attribute '__class__' of 'str' object is unsafe");
  expect_fails_quickly("{{ ''.__class__.__mro__[1].__subclasses__() }}", "security error");
  expect_fails_quickly("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "'cycler' is undefined");
  expect_fails_quickly("{{ joiner.__init__.__globals__ }}", "'joiner' is undefined");
  expect_fails_quickly("{{ namespace.__init__.__globals__ }}", "security error");
  expect_fails_quickly("{{ self.__init__.__globals__.__builtins__ }}", "'self' is undefined");
  expect_fails_quickly("{{ [].__class__.__base__.__subclasses__() }}", "security error");
  expect_fails_quickly("{{ lipsum.__globals__['os'].popen('id').read() }}", "'lipsum' is undefined");
  expect_fails_quickly("{{ config.items() }}", "'config' is undefined");
  expect_fails_quickly("{{ [1].append(2) }}", "security error: access to attribute 'append' of 'list' object is unsafe");
  expect_fails_quickly("{{ {'a': 1}.update({'b': 2}) }}", "security error: access to attribute 'update'");
  expect_fails_quickly("{{ {'a': 1}.pop('a') }}", "security error");
  expect_fails_quickly("{{ ''.format.__globals__.os }}", "security error");
  expect_fails_quickly("{% include '/etc/passwd' %}", "unsupported tag 'include'");
  expect_fails_quickly("{% import 'os' as os %}{{ os.popen('id') }}", "unsupported tag 'import'");
  expect_fails_quickly("{{ loop.__class__ }}", "'loop' is undefined");
  expect_fails_quickly("{% for x in [1] %}{{ loop.__class__.__mro__ }}{% endfor %}", "security error");
}

TEST(ChatTemplateSandbox, LoopsAndRecursionAreBounded) {
  expect_fails_quickly("{% for i in range(10**9) %}x{% endfor %}", "range limit");
  expect_fails_quickly("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                       "template exceeded the iteration limit (1000000)");
  expect_fails_quickly(
      "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}{% endfor %}"
      "{% endfor %}",
      "template exceeded the iteration limit");
  expect_fails_quickly("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                       "template exceeded the macro call depth limit (128)");
  expect_fails_quickly("{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(0) }}", "template exceeded");
  expect_fails_quickly("{% macro f() %}{{ (((((((((f()))))))))) ~ ((((((((((1)))))))))) }}{% endmacro %}{{ f() }}",
                       "template exceeded");
  expect_fails_quickly(
      "{% macro a(n) %}{% for i in range(100) %}{{ b(n) }}{% endfor %}{% endmacro %}"
      "{% macro b(n) %}{% for i in range(100) %}{{ a(n) }}{% endfor %}{% endmacro %}{{ a(0) }}",
      "template exceeded");
}

TEST(ChatTemplateSandbox, SizesAreBounded) {
  expect_fails_quickly("{{ 'a' * 10**9 }}", "template exceeded the output size limit");
  expect_fails_quickly("{{ 'abc' * 9223372036854775807 }}", "template exceeded the output size limit");
  expect_fails_quickly("{{ [1] * 10**9 }}", "template exceeded the list size limit");
  expect_fails_quickly(
      "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
      "template exceeded the output size limit");
  expect_fails_quickly(
      "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ 'xxxxxxxxxxxxxxxx' %}"
      "{% endfor %}",
      "template exceeded the work limit");
  expect_fails_quickly(
      "{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
      "template exceeded the list size limit");
  expect_fails_quickly(
      "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}",
      "template exceeded the value nesting limit");
  expect_fails_quickly("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
                       "template exceeded the output size limit");
  expect_fails_quickly("{% set s = 'x' * 10000000 %}{{ [s, s, s, s]|tojson }}", "template exceeded");
  expect_fails_quickly("{% set s = 'x' * 10000000 %}{{ [s, s, s, s] }}", "template exceeded");
  expect_fails_quickly("{% set s = 'x' * 10000000 %}{{ [s, s]|join }}", "template exceeded");
  expect_fails_quickly("{% set s = 'x' * 10000000 %}{{ s.replace('x', 'yy') }}", "template exceeded");
  expect_fails_quickly("{% set s = 'x' * 10000000 %}{{ s|indent(8) ~ s }}", "template exceeded");
}

TEST(ChatTemplateSandbox, ParsingIsBounded) {
  expect_fails_quickly("{{ " + std::string(1000, '(') + "1" + std::string(1000, ')') + " }}",
                       "template exceeded the nesting limit (64)");
  expect_fails_quickly("{{ " + std::string(1000, '[') + std::string(1000, ']') + " }}", "nesting limit");
  expect_fails_quickly("{{ " + std::string(1000, '-') + "1 }}", "nesting limit");
  std::string not_chain;
  for (int i = 0; i < 1000; ++i) not_chain += "not ";
  expect_fails_quickly("{{ " + not_chain + "1 }}", "nesting limit");
  std::string sum = "1";
  for (int i = 0; i < 10000; ++i) sum += "+1";
  expect_fails_quickly("{{ " + sum + " }}", "template exceeded the expression depth limit (256)");
  std::string ifs, endifs;
  for (int i = 0; i < 1000; ++i) {
    ifs += "{% if true %}";
    endifs += "{% endif %}";
  }
  expect_fails_quickly(ifs + endifs, "nesting limit");
  std::string filters = "{{ 'a'";
  for (int i = 0; i < 10000; ++i) filters += "|upper";
  expect_fails_quickly(filters + " }}", "expression depth limit");
}

TEST(ChatTemplateSandbox, DeepContextIsRefused) {
  ordered_json deep = 1;
  for (int i = 0; i < 1000; ++i) deep = ordered_json::array({deep});
  EXPECT_THROW(ChatTemplate("{{ x }}", "t").render(ordered_json{{"x", deep}}), Error);
}

}  // namespace
}  // namespace mil
